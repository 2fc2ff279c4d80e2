"""Bad flag values end in one line naming the flag, never in a traceback.

Each command's numeric flags are found from its tyro `Args` (or argparse parser), so a flag added later is
fed an invalid value here too, and fails this test until its rule is written. The checks run in-process;
one subprocess per command shows the whole path: exit status 2, one line, no traceback.
"""

import dataclasses
import re
import subprocess
import sys
import typing

import pytest
import tyro

from conftest import ROOT, load_script
from pi_dec import bench, quickstart
from pi_dec.demos import cli as demos_cli
from pi_dec.policy_decorator import validate
from pi_dec.run import UsageError, check_numbers, cli_flag

SCRIPTS = {path: load_script(path) for path in ("offline/diffusion_policy_unet_maniskill2.py", "offline/bet_maniskill2.py",
                                                "online/pi_dec_diffusion_maniskill2.py", "online/pi_dec_bet_maniskill2.py")}
# command -> (its tyro Args, the check it runs on them before anything starts)
COMMANDS = {path: (m.Args, m.check_args if path.startswith("offline/") else lambda args, m=m: validate(args, m.RULES))
            for path, m in SCRIPTS.items()}
COMMANDS["python -m pi_dec.demos"] = (demos_cli.Args, lambda args: check_numbers(args, demos_cli.RULES))

# Invalid for every numeric flag: -1 (except those below) and, for floats, NaN; BAD adds upper bounds and the like.
NEGATIVE_IS_VALID = {"log_std_min"}
BAD = {"log_std_min": ["5", "inf"], "gamma": ["1.5"], "tau": ["0", "1.5"], "ddim_steps": ["101"], "ddpm_steps": ["101", "0"],
       "seed": ["2147483648"], "diffusion_step_embed_dim": ["2", "7"]}


def numeric_fields(args_cls) -> dict[str, type]:
    """{field: int or float} for the fields typed int, float, X | None or list[X] of them."""
    found, hints = {}, typing.get_type_hints(args_cls)  # resolves the `from __future__` string annotations
    for name in (f.name for f in dataclasses.fields(args_cls)):
        hint = hints[name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if typing.get_origin(hint) in (list, tuple):
            inner = [typing.get_args(hint)[0]]
        if len(inner) == 1 and inner[0] in (int, float):
            found[name] = inner[0]
    return found


def bad_values(name: str, kind: type) -> list[str]:
    return [*(["-1"] if name not in NEGATIVE_IS_VALID else []), *(["nan"] if kind is float else []), *BAD.get(name, [])]


CASES = [(command, name, value) for command, (args_cls, _) in COMMANDS.items()
         for name, kind in numeric_fields(args_cls).items() for value in bad_values(name, kind)]


@pytest.mark.parametrize("command, name, value", CASES, ids=[f"{c.split('/')[-1]}:{n}={v}" for c, n, v in CASES])
def test_every_numeric_flag_is_checked(command, name, value):
    args_cls, check = COMMANDS[command]
    args = tyro.cli(args_cls, args=[cli_flag(name), value])
    with pytest.raises(UsageError) as err:
        check(args)
    message = str(err.value)
    assert message.startswith(f"{cli_flag(name)} ") and ": must be " in message and "\n" not in message, message


def test_the_enumeration_finds_the_flags():
    """Guards the test above: were the type lookup to break, it would silently check nothing."""
    online = numeric_fields(SCRIPTS["online/pi_dec_diffusion_maniskill2.py"].Args)
    assert {"seed": int, "num_threads": int, "gamma": float, "buffer_size": int, "ddim_steps": int}.items() <= online.items()
    assert numeric_fields(SCRIPTS["offline/diffusion_policy_unet_maniskill2.py"].Args)["unet_dims"] is int
    assert len(CASES) > 120


@pytest.mark.parametrize("command", COMMANDS)
def test_defaults_and_off_values_pass(command):
    args_cls, check = COMMANDS[command]
    check(tyro.cli(args_cls, args=[]))
    off = {"num_threads": "None", "save_freq": "None", "num_demo_traj": "None", "buffer_size": "None",
           "update_threads": "None", "max_attempts": "None", "eval_freq": "0", "learning_starts": "0",
           "extra_steps": "0", "action_noise": "0"}
    fields = numeric_fields(args_cls)
    check(tyro.cli(args_cls, args=[x for name, value in off.items() if name in fields for x in (cli_flag(name), value)]))
    if "save_freq" in fields:
        check(tyro.cli(args_cls, args=["--save-freq", "0"]))


@pytest.mark.parametrize("argv, message", [
    (["--obs-horizon", "8", "--act-horizon", "10"], "--pred-horizon 16: must be at least --obs-horizon + --act-horizon - 1 = 17."),
    (["--pred-horizon", "10"], "--pred-horizon 10: must be a multiple of 4 "),
    (["--unet-dims", "64", "72", "--n-groups", "16"], "--unet-dims 64 72: must be multiples of --n-groups (16)"),
    (["--unet-dims", "12", "24", "--n-groups", "4", "--pred-horizon", "16"], "--unet-dims 12 24: must be multiples of"),
    (["--num-eval-episodes", "10", "--num-eval-envs", "3"], "--num-eval-episodes 10: must be a multiple of --num-eval-envs"),
])
def test_diffusion_policy_flag_combinations(argv, message):
    module = SCRIPTS["offline/diffusion_policy_unet_maniskill2.py"]
    with pytest.raises(UsageError, match=re.escape(message)):
        module.check_args(tyro.cli(module.Args, args=argv))
    module.check_args(tyro.cli(module.Args, args=["--pred-horizon", "5", "--unet-dims", "64"]))  # no halving


def test_bet_heads_divide_the_width():
    module = SCRIPTS["offline/bet_maniskill2.py"]
    with pytest.raises(UsageError, match=re.escape("--n-embedding 100: must be a multiple of --n-heads (8).")):
        module.check_args(tyro.cli(module.Args, args=["--n-embedding", "100", "--n-heads", "8"]))


def argparse_numeric_flags(parser) -> list[str]:
    return [a.dest for a in parser._actions if a.type in (int, float)]


ARGPARSE_CASES = [(module, name) for module in (bench, quickstart) for name in argparse_numeric_flags(module.make_parser())]


@pytest.mark.parametrize("module, name", ARGPARSE_CASES, ids=[f"{m.__name__}:{n}" for m, n in ARGPARSE_CASES])
def test_every_numeric_argparse_flag_is_checked(module, name):
    args = module.make_parser().parse_args([cli_flag(name), "-1"])
    with pytest.raises(UsageError, match=f"^{cli_flag(name)} -1: must be "):
        check_numbers(args, module.RULES)
    check_numbers(module.make_parser().parse_args([]), module.RULES)  # the defaults pass


def test_bad_flags_end_in_one_line_from_each_command(tmp_path):
    """The real commands, started side by side: exit status 2, `error: <flag> ...`, no traceback."""
    commands = [
        ([str(ROOT / "offline/diffusion_policy_unet_maniskill2.py"), "--log-freq", "0"], "--log-freq 0"),
        ([str(ROOT / "offline/bet_maniskill2.py"), "--lr", "nan"], "--lr nan"),
        ([str(ROOT / "online/pi_dec_diffusion_maniskill2.py"), "--prog-explore", "0"], "--prog-explore 0"),
        ([str(ROOT / "online/pi_dec_bet_maniskill2.py"), "--gamma", "1.5"], "--gamma 1.5"),
        (["-m", "pi_dec.demos", "--num-demos", "0", "--out", str(tmp_path)], "--num-demos 0"),
        (["-m", "pi_dec.bench", "--num-envs", "0"], "--num-envs 0"),
        (["-m", "pi_dec.quickstart", "--seed", "-5"], "--seed -5"),
    ]
    procs = [subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for argv, _ in commands]
    for proc, (argv, flag) in zip(procs, commands):
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in stderr, (argv, stderr[-2000:])
        assert stderr.strip().splitlines()[-1].startswith(f"error: {flag}: must be "), (argv, stderr[-2000:])
