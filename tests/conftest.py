import pytest

import pi_dec  # noqa: F401  (Vulkan set up before any test imports sapien)
import pi_dec.envs  # noqa: F401  (registers the tasks)
from pi_dec.standin_assets import write_standins


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """Stand-in faucets and chairs: {'asset_root': ..., 'faucet_json': ..., 'chair_json': ...}."""
    root = tmp_path_factory.mktemp("standin_assets")
    return {
        "asset_root": str(root / "partnet_mobility" / "dataset"),
        "faucet_json": str(write_standins(root, "faucet")),
        "chair_json": str(write_standins(root, "chair")),
    }


@pytest.fixture(scope="session")
def demos(tmp_path_factory):
    """A few real demonstrations per task, generated and converted by `python -m pi_dec.demos`.

    {env_id: (output folder, summary dict)}
    """
    from pi_dec.demos.cli import Args, main

    root = tmp_path_factory.mktemp("demos")
    result = {}
    for env_id, n in (("PickCube-v0", 3), ("StackCube-v0", 3), ("PegInsertionSide-v2", 3)):
        out = root / env_id.split("-")[0]
        result[env_id] = (out, main(Args(env_id=env_id, num_demos=n, out=str(out), seed=1000, num_procs=2)))
    return result


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def load_script(relpath):
    """Import a script (offline/*.py, online/*.py) as a module without running its __main__."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(relpath.replace("/", "_").removesuffix(".py"), ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def run_script(relpath, *args, timeout=900, check=True):
    """Run a script as a user would (a subprocess with this interpreter); return the CompletedProcess."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / relpath), *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"{relpath} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="session")
def offline_runs(demos, tmp_path_factory):
    """Base policies trained for a few iterations by the real offline scripts (each with one evaluation).

    {'diffusion': run folder (PegInsertionSide-v2), 'bet': run folder (StackCube-v0, pd_ee_delta_pos)}
    """
    out = tmp_path_factory.mktemp("offline_runs")
    peg_dir, _ = demos["PegInsertionSide-v2"]
    stack_dir, _ = demos["StackCube-v0"]
    common = ["--output-dir", out, "--num-eval-episodes", 1, "--num-eval-envs", 1, "--log-freq", 5,
              "--batch-size", 16, "--num-threads", 1]
    run_script("offline/diffusion_policy_unet_maniskill2.py", "--env-id", "PegInsertionSide-v2",
               "--demo-path", peg_dir / "trajectory.h5", "--total-iters", 12, "--eval-freq", 12, "--save-freq", 6,
               "--act-horizon", 8, *common)
    run_script("offline/bet_maniskill2.py", "--env-id", "StackCube-v0", "--demo-path", stack_dir / "trajectory.h5",
               "--control-mode", "pd_ee_delta_pos", "--total-iters", 12, "--eval-freq", 12, "--save-freq", 6,
               "--context-window", 10, *common)
    dp = next((out / "PegInsertionSide-v2" / "Offline-DiffusionPolicy-UNet").iterdir())
    bet = next((out / "StackCube-v0" / "Offline-BeT").iterdir())
    return {"diffusion": dp, "bet": bet}


EXPERT_DIR = ROOT.parent / "shared" / "adroit"  # the DAPG experts (../shared/adroit/README.md)


@pytest.fixture(scope="session")
def door_demos(tmp_path_factory):
    """Two expert demos of Adroit Door and of Hammer (noisy execution, 4 steps past success), by `python -m
    pi_dec.demos`: {root}/<env_id>/trajectory.h5."""
    if not EXPERT_DIR.is_dir():
        pytest.skip(f"expert policies not found at {EXPERT_DIR}")
    from pi_dec.demos.cli import Args, main

    root = tmp_path_factory.mktemp("door_demos")
    for env_id in ("AdroitHandDoorSparse-v1", "AdroitHandHammerSparse-v1"):
        main(Args(env_id=env_id, num_demos=2, out=str(root / env_id), expert_dir=str(EXPERT_DIR),
                  action_noise=0.1, extra_steps=4))
    return root
