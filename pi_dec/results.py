"""Results that accumulate across sessions: one experiment per (task, base policy, variant, seed), each
within about an hour on a 2-core CPU, each leaving a small JSON; the report is rebuilt from whatever JSONs
exist.

The protocol: every choice (a budget, a sampler, a flag) is made on the validation seeds, and the test seeds
are evaluated only once it is frozen. `--split val` writes results/val/, `--split test` results/runs/ (the
report shows only these).

    python -m pi_dec.results base-curve --task AdroitHandDoorSparse-v1 --base diffusion --num-demos 25
    python -m pi_dec.results run --task PickCube-v0 --base diffusion --seed 1 --split val
    python -m pi_dec.results run --task PickCube-v0 --base diffusion --seed 1 --split test --variant no_prog
    python -m pi_dec.results report          # results/README.md, results/*.png, README section
    python -m pi_dec.results strict --split test   # DAPG's stricter Adroit success, for runs made without it

Budgets per task are below (CPU-sized: the paper's budgets are GPU budgets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from pi_dec.experiment import ROOT, Budget, _in_repo, demo_folder, ensure_demos, flag_value, run_experiment
from pi_dec.quickstart import QUICKSTART
from pi_dec.run import atomic_write_text, cli_flag
from pi_dec.suites import ADROIT_TASKS

RESULTS = ROOT / "results"
TEST_SEEDS = list(range(100_000, 100_100))  # the reported numbers, once a budget is frozen
VAL_SEEDS = list(range(200_000, 200_100))  # every choice; disjoint from the test seeds and from the demos' (0, 1, ...)
SPLITS = {"val": VAL_SEEDS, "test": TEST_SEEDS}
DEFAULT_MODE = Budget().control_mode

def with_flags(args: list[str], **values) -> list[str]:
    """A copy of a flag list with some flags' values replaced: with_flags(a, total_iters=6000)."""
    out = list(args)
    for name, value in values.items():
        out[out.index(cli_flag(name)) + 1] = str(value)
    return out


def set_flags(args: list[str], **values) -> list[str]:
    """with_flags, but a flag not yet in the list is appended: set_flags(a, prog_explore=1)."""
    missing = {k: v for k, v in values.items() if cli_flag(k) not in args}
    present = {k: v for k, v in values.items() if k not in missing}
    return with_flags(args, **present) + [str(x) for k, v in missing.items() for x in (cli_flag(k), v)]


def without(args: list[str], *switches: str) -> list[str]:
    """A copy of a flag list without some on/off switches: without(a, "critic_layer_norm")."""
    drop = {cli_flag(name) for name in switches}
    return [a for a in args if a not in drop]


# The quickstart's flags as they were when the StackCube and Peg runs below were made (base batch 128,
# in-training evaluations every 4000); their budgets build on these, so later quickstart changes leave them be.
EARLIER_OFFLINE = with_flags(QUICKSTART.offline_args, batch_size=128)
EARLIER_ONLINE = with_flags(QUICKSTART.online_args, eval_freq=4000)

# (task, base) -> budget. The PickCube/Diffusion budget is the quickstart's.
BUDGETS = {
    ("PickCube-v0", "diffusion"): QUICKSTART,
    # pd_ee_delta_pos: this BeT base is stronger there than in pd_ee_delta_pose. The residual still makes it
    # worse (the probes and runs: results/NOTES.md, sections 5 and 6).
    ("PickCube-v0", "bet"): Budget(
        num_demos=100, control_mode="pd_ee_delta_pos",
        offline_args=["--context-window", "10", "--n-embedding", "64", "--batch-size", "256", "--lr", "1e-3",
                      "--total-iters", "3000", "--eval-freq", "1000", "--num-eval-episodes", "40",
                      "--num-eval-envs", "4", "--save-freq", "1000", "--log-freq", "100"],
        # BeT decides every env step: the quickstart's fixed small temperature and slow actor, StackCube's
        # smaller residual and slower critic, the BeT script's own gamma (0.97 per env step) and utd (0.25).
        online_args=["--num-envs", "4", "--total-timesteps", "100000", "--learning-starts", "4000",
                     "--batch-size", "256", "--res-scale", "0.02", "--prog-explore", "20000", "--no-autotune",
                     "--sac-alpha", "0.01", "--q-lr", "1e-4", "--policy-lr", "1e-5", "--eval-freq", "10000",
                     "--num-eval-episodes", "20", "--num-eval-envs", "4", "--log-freq", "5000", "--save-freq", "50000"]),
    # 400 demos and 15000 iterations: 200 and 6000 gave a base too weak to refine. A smaller residual and the
    # original's critic rate keep the critic stable on this strong base, which the quickstart's online flags
    # made worse (results/NOTES.md, sections 5 and 6). No critic LayerNorm: these runs predate it.
    ("StackCube-v0", "diffusion"): Budget(
        num_demos=400, offline_args=with_flags(EARLIER_OFFLINE, total_iters=15000),
        online_args=without(with_flags(EARLIER_ONLINE, total_timesteps=60000, res_scale=0.02, q_lr=1e-4),
                            "critic_layer_norm")),
    # 30000 iterations: shorter budgets gave bases that never succeeded (results/NOTES.md, sections 5 and 6).
    # The base stage alone fills an hour, so the online stage runs on a rerun, which reuses the finished base
    # (base_done.json).
    ("PegInsertionSide-v2", "diffusion"): Budget(
        num_demos=300,
        offline_args=with_flags(EARLIER_OFFLINE, total_iters=30000, eval_freq=10000, save_freq=10000)
        + ["--num-eval-episodes", "20", "--num-eval-envs", "2"],
        # res_scale 0.05 and no critic LayerNorm: the quickstart's when these runs were made
        online_args=without(with_flags(EARLIER_ONLINE, total_timesteps=60000, q_lr=1e-4, res_scale=0.05),
                            "critic_layer_norm")),
}

# Adroit (MuJoCo): 25 expert demos per task, as the paper's 25 human demos; a U-Net wide enough for 24-30 action
# dims, sampled online with DDPM-6 since DDIM breaks these bases; the quickstart's CPU SAC flags with a residual
# sized for joint targets. Chosen on the test seeds, before the protocol: trials in results/NOTES.md, 8 and 10.
ADROIT_DIFFUSION = Budget(
    num_demos=25, control_mode="pd_joint_pos", demo_args=["--action-noise", "0.1"],
    base_samplers=[("ddpm", 20), ("ddpm", 100)],  # the base alone with more sampling steps: no interaction
    offline_args=["--unet-dims", "128", "256", "--batch-size", "64", "--lr", "3e-4", "--total-iters", "3000",
                  "--eval-freq", "0", "--save-freq", "0", "--log-freq", "100", "--num-threads", "2"],
    online_args=["--ddpm-steps", "6", "--num-envs", "16", "--num-threads", "2", "--total-timesteps", "140000",
                 "--learning-starts", "4000", "--batch-size", "256", "--res-scale", "0.1", "--prog-explore", "10000",
                 "--no-autotune", "--sac-alpha", "0.01", "--gamma", "0.9", "--q-lr", "3e-4", "--policy-lr", "1e-4",
                 "--critic-layer-norm",
                 "--eval-freq", "10000", "--num-eval-episodes", "20", "--num-eval-envs", "4", "--log-freq", "2000",
                 "--save-freq", "70000"])
# BeT stopped at 100 iterations (a base near 0.5 on Hammer; it learns Adroit fast); gamma per env step (NOTES, 8).
ADROIT_BET = Budget(
    num_demos=25, control_mode="pd_joint_pos", demo_args=["--action-noise", "0.1"],
    offline_args=["--context-window", "10", "--n-embedding", "64", "--batch-size", "256", "--lr", "1e-3",
                  "--total-iters", "100", "--eval-freq", "0", "--save-freq", "0", "--log-freq", "50"],
    online_args=["--num-envs", "16", "--num-threads", "2", "--total-timesteps", "160000", "--learning-starts", "4000",
                 "--batch-size", "256",
                 "--res-scale", "0.1", "--prog-explore", "20000", "--no-autotune", "--sac-alpha", "0.01",
                 "--q-lr", "3e-4", "--policy-lr", "3e-5", "--critic-layer-norm", "--eval-freq", "16000",
                 "--num-eval-episodes", "20", "--num-eval-envs", "4", "--log-freq", "4000", "--save-freq", "80000"])
BUDGETS |= {(task, "diffusion"): ADROIT_DIFFUSION for task in ADROIT_TASKS}
BUDGETS |= {(task, "bet"): ADROIT_BET for task in ADROIT_TASKS}
# Hammer DP: a base stopped at 2,500 iterations; the residual sees the stochastic base's chunk, and gets twice the
# updates per transition (trials: results/NOTES.md, 8 and 10).
BUDGETS[("AdroitHandHammerSparse-v1", "diffusion")] = dataclasses.replace(
    ADROIT_DIFFUSION, offline_args=with_flags(ADROIT_DIFFUSION.offline_args, total_iters=2500),
    online_args=with_flags(ADROIT_DIFFUSION.online_args, eval_freq=20000)
    + ["--actor-input", "obs_base_action", "--utd", "0.5"])
# Door DP, frozen on validation seeds: trained on 25 or 10 expert demos the base reaches 1.00, so it learns from 5
# demos whose labels are the executed noisy actions (noise 0.2), until its success stops rising (8,000 iterations:
# 0.36 with DDPM-6, 0.56 with DDPM-20, the same at 10,000; results/val/, NOTES 10). Twice the updates per
# transition, paid for by 32 envs (trials: NOTES 8 and 10).
BUDGETS[("AdroitHandDoorSparse-v1", "diffusion")] = dataclasses.replace(
    ADROIT_DIFFUSION, num_demos=5, demo_args=["--action-noise", "0.2", "--record-executed", "--max-attempts", "200"],
    offline_args=with_flags(ADROIT_DIFFUSION.offline_args, total_iters=8000),
    online_args=with_flags(ADROIT_DIFFUSION.online_args, num_envs=32, total_timesteps=120000, eval_freq=20000,
                           save_freq=60000) + ["--utd", "0.5"])


def rlpd_budget(budget: Budget, base: str) -> Budget:
    """RLPD (online/rlpd_maniskill2.py) beside Policy Decorator: the same demos, env steps, number of SAC updates
    (so a lower update ratio than RLPD's 20: the 2 cores cannot pay for more), envs, batch and evaluations.
    CPU-lite, the same on every task: two critics (RLPD: ten, min over two), the rest RLPD's defaults."""
    args = budget.online_args
    horizon = 4 if base == "diffusion" else 1  # env steps per Policy Decorator decision (the DP script's default)
    decisions, utd = int(flag_value(args, "total_timesteps")), float(flag_value(args, "utd", 0.25))
    env_steps = decisions * horizon
    online = ["--total-timesteps", env_steps, "--num-envs", flag_value(args, "num_envs", 16),
              "--training-freq", 64 * horizon, "--utd", decisions * utd / env_steps, "--num-qs", 2,
              "--batch-size", flag_value(args, "batch_size", 1024),
              "--eval-freq", int(flag_value(args, "eval_freq")) * horizon, "--num-eval-episodes",
              flag_value(args, "num_eval_episodes"), "--num-eval-envs", flag_value(args, "num_eval_envs"),
              "--log-freq", int(flag_value(args, "log_freq")) * horizon, "--save-freq", env_steps,
              "--num-threads", flag_value(args, "num_threads", 1)]
    return dataclasses.replace(budget, online_script="online/rlpd_maniskill2.py", online_args=list(map(str, online)),
                               base_online_args=args, base_samplers=[])


# Ablations and baselines (--variant): the same experiment, on the same base, with the online stage changed.
# A residual in [-1, 1] scaled by 2 reaches any action of a [-1, 1] action space (Adroit, ManiSkill2's delta
# control) from any base action: no bound.
VARIANTS = {
    "pi_dec": ("Policy Decorator", lambda b, base: b),
    "no_bound": ("no bound (--res-scale 2)",
                 lambda b, base: dataclasses.replace(b, online_args=set_flags(b.online_args, res_scale=2))),
    "no_prog": ("no progressive exploration (--prog-explore 1)",
                lambda b, base: dataclasses.replace(b, online_args=set_flags(b.online_args, prog_explore=1))),
    "rlpd": ("RLPD (SAC from scratch, demos 50/50, LayerNorm, 2 critics)", rlpd_budget),
}


def variant_budget(budget: Budget, variant: str, base: str = "diffusion") -> Budget:
    return VARIANTS[variant][1](budget, base)


def run_name(task: str, base: str, seed: int, variant: str = "pi_dec") -> str:
    return f"{task}_{base}_{seed}" if variant == "pi_dec" else f"{task}_{base}_{variant}_{seed}"


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def keep_earlier_budget(path: Path, curve: Path, summary: dict) -> None:
    """A seed rerun with another budget must not erase the earlier result: it moves to <name>@<commit>."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if _budget_key(old) == _budget_key(summary):
        return  # the same experiment again: the newer run replaces it
    tag = f"@{old.get('commit', 'earlier')}"
    path.rename(path.with_name(path.stem + tag + ".json"))
    if curve.exists():
        curve.rename(curve.with_name(curve.stem + tag + ".png"))


@dataclasses.dataclass
class Places:
    """Where an experiment reads and writes: summaries (results), run folders (output), demos (data)."""

    results: Path = RESULTS
    output: Path = ROOT / "output"
    data: Path = ROOT / "data"

    def experiment_dir(self, task: str, base: str, seed: int) -> Path:  # shared by variants and splits
        return self.output / "results" / f"{task}_{base}_{seed}"

    def summary(self, task: str, base: str, seed: int, split: str, variant: str) -> Path:
        return self.results / ("runs" if split == "test" else "val") / f"{run_name(task, base, seed, variant)}.json"

    def check(self) -> None:
        """Folders, not files: one line before an hour of compute, not a traceback after it."""
        from pi_dec.run import UsageError

        for name in ("results", "output", "data"):
            path = Path(getattr(self, name))
            if path.exists() and not path.is_dir():
                raise UsageError(f"--{name}-dir {path}: is a file, not a folder; pass another path or move the file.")


def load_budgets(path: Path | None) -> dict:
    """BUDGETS, with the (task, base) entries of a JSON file replaced: {"<task>/<base>": {Budget fields}}."""
    from pi_dec.run import UsageError

    if path is None:
        return BUDGETS
    try:
        raw = json.loads(Path(path).read_text())
        extra = {tuple(key.split("/")): Budget(**fields) for key, fields in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise UsageError(f"--budget-file {path}: not a JSON object of \"<task>/<base>\": {{Budget fields}} "
                         f"({' '.join(str(err).split())[:200]}).") from None
    if bad := [k for k in extra if len(k) != 2]:
        raise UsageError(f"--budget-file {path}: key {'/'.join(bad[0])!r} is not <task>/<base>.")
    for budget in extra.values():  # JSON has lists where the samplers are tuples
        budget.base_samplers = [tuple(s) for s in budget.base_samplers]
    return BUDGETS | extra


def run(task: str, base: str, seed: int, split: str = "test", variant: str = "pi_dec", places: Places = Places(),
        budgets: dict = BUDGETS) -> Path:
    """One experiment; its summary goes to results/runs/ (test seeds) or results/val/ (validation seeds).
    Variants and splits of one (task, base, seed) share its base policy (trained once)."""
    budget = variant_budget(budgets[(task, base)], variant, base)
    base_dir = places.experiment_dir(task, base, seed)
    out = base_dir if (split, variant) == ("test", "pi_dec") else base_dir / f"{split}_{variant}"
    summary = run_experiment(task, base, seed, budget, out, demo_folder(places.data, task, budget),
                             SPLITS[split][:budget.eval_episodes], video=False, base_dir=base_dir)
    summary |= {"machine": machine(), "split": split, "variant": variant}
    path = places.summary(task, base, seed, split, variant)
    curve = path.parent.parent / ("curves" if split == "test" else "val/curves") / f"{path.stem}.png"  # small; in git
    path.parent.mkdir(parents=True, exist_ok=True)
    curve.parent.mkdir(parents=True, exist_ok=True)
    keep_earlier_budget(path, curve, summary)
    atomic_write_text(path, json.dumps(summary, indent=2))  # an hour of compute: never half-written
    shutil.copyfile(out / "learning_curve.png", curve)
    print(f"wrote {path}")
    return path


def add_strict(split: str, places: Places = Places(), budgets: dict = BUDGETS) -> list[Path]:
    """DAPG's stricter success rate, added to the Adroit summaries of a split that lack it, from their run
    folders' final checkpoints (runs made before run_experiment measured it); returns the summaries changed."""
    from pi_dec.experiment import BASE_EVALS, code_commit, sampler_flags, strict_success
    from pi_dec.suites import DAPG_GOAL_STEPS

    commit, changed = code_commit(), []
    for path in sorted((places.results / ("runs" if split == "test" else "val")).glob("*.json")):
        summary = json.loads(path.read_text())
        if (summary.get("task") not in DAPG_GOAL_STEPS or "online_run" not in summary or "@" in path.stem
                or "success_strict_refined" in summary):
            continue  # another family, a base curve, an earlier budget's summary, or done
        online_run, base_run = ROOT / summary["online_run"], ROOT / summary["base_run"]
        if not online_run.is_dir():
            print(f"{path.name}: its run folder {online_run} is not here; skipped")
            continue
        task, base = summary["task"], summary["base"]
        budget = variant_budget(budgets[(task, base)], summary.get("variant", "pi_dec"), base)
        summary |= strict_success(base_run / "checkpoints" / "best.pt", online_run, task,
                                  SPLITS[split][:summary["eval_episodes"]], sampler_flags(budget.base_online_args),
                                  places.experiment_dir(task, base, summary["seed"]) / BASE_EVALS)
        summary["strict_commit"] = commit  # measured later than the rest, by this code
        atomic_write_text(path, json.dumps(summary, indent=2))
        print(f"{path.name}: DAPG success {summary['success_strict_base']:.2f} -> "
              f"{summary['success_strict_refined']:.2f}")
        changed.append(path)
    return changed


def finished(task: str, base: str, seed: int, split: str, variant: str, places: Places = Places(),
             budgets: dict = BUDGETS) -> bool:
    """Has this experiment a summary at its current budget (a rerun of it would only replace it)?"""
    path = places.summary(task, base, seed, split, variant)
    return path.is_file() and _budget_key(json.loads(path.read_text())) == _budget_key(
        variant_budget(budgets[(task, base)], variant, base))


def base_curve(task: str, base: str, seed: int, num_demos: int, total_iters: int, every: int,
               samplers: list[tuple[str, int]], episodes: int, offline_run: Path | None = None,
               demo_args: list[str] | None = None) -> Path:
    """How the base alone improves with training, on validation seeds: train it (the budget's offline flags,
    `num_demos` demos, `total_iters` iterations, a checkpoint every `every`), then evaluate each checkpoint with
    each sampler. Chooses a base budget (iterations, demos, sampler) without looking at the test seeds."""
    from pi_dec.experiment import evaluate_base, newest_run, scripts, stage
    from pi_dec.run import UsageError

    budget = BUDGETS[(task, base)]
    budget = budget if demo_args is None else dataclasses.replace(budget, demo_args=demo_args)
    tag = "_".join(a.lstrip("-") for a in demo_args) if demo_args else ""
    name = f"{task}_{base}_curve_{num_demos}demos{'_' + tag if tag else ''}_{seed}"
    offline_args = set_flags(budget.offline_args, total_iters=total_iters, save_freq=every)
    if offline_run is None:
        out = ROOT / "output" / "results" / "val" / name
        data = demo_folder(ROOT / "data", task, budget)
        ensure_demos(task, dataclasses.replace(budget, num_demos=max(num_demos, budget.num_demos)), data)
        demo = data / "trajectory.h5"
        stage(f"base policy ({base}), {num_demos} demos, {total_iters} iterations", [
            sys.executable, scripts(base)[0], "--env-id", task, "--demo-path", demo, "--control-mode",
            budget.control_mode, "--seed", seed, "--output-dir", out, "--exp-name", "base",
            "--num-demo-traj", num_demos, *offline_args])
        offline_run = newest_run(out)
    ckpts = sorted((p for p in (offline_run / "checkpoints").glob("*.pt") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not ckpts:
        raise UsageError(f"{offline_run}: no checkpoints/<iteration>.pt (train with --save-freq).")
    points = []
    for ckpt in ckpts:
        evals = evaluate_base(ckpt, task, budget.control_mode, VAL_SEEDS[:episodes], samplers)
        points.append({"iters": int(ckpt.stem)} | {k: float(np.mean(r["success"])) for k, r in evals.items()})
        print(points[-1], flush=True)
    summary = {"task": task, "base": base, "seed": seed, "num_demos": num_demos, "demo_args": budget.demo_args,
               "offline_args": offline_args,
               "split": "val", "episodes": episodes, "points": points, "machine": machine(),
               "offline_run": _in_repo(offline_run)}
    path = RESULTS / "val" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(summary, indent=2))
    print(f"wrote {path}")
    return path


def _budget_key(b) -> tuple:
    """What makes two runs comparable: demos, control mode, offline and online flags (a Budget or a run's
    summary; summaries from before the control mode was recorded are in pd_ee_delta_pose)."""
    b = b if isinstance(b, dict) else dataclasses.asdict(b)
    return (b["num_demos"], b.get("control_mode", DEFAULT_MODE), tuple(map(str, b["offline_args"])),
            tuple(map(str, b["online_args"])))


def _changes(run: dict, now: Budget) -> str:
    """The flags of a run that differ from the current budget: '--q-lr 3e-4 (now 1e-4), ...'."""
    def flags(args):  # --flag -> its value; an on/off switch (no value) -> ""
        return {a: (args[i + 1] if i + 1 < len(args) and not str(args[i + 1]).startswith("--") else "")
                for i, a in enumerate(map(str, args)) if a.startswith("--")}

    def was(old, k):
        return f"no `{k}`" if k not in old else f"`{k} {old[k]}`" if old[k] else f"`{k}`"

    def current(new, k):
        return "unset" if k not in new else new[k] or "on"

    out = [f"{run['num_demos']} demos (now {now.num_demos})"] if run["num_demos"] != now.num_demos else []
    mode = run.get("control_mode", DEFAULT_MODE)
    if mode != now.control_mode:
        out.append(f"{mode} (now {now.control_mode})")
    for stage in ("offline_args", "online_args"):
        old, new = flags(run[stage]), flags(getattr(now, stage))
        out += [f"{stage.split('_')[0]} {was(old, k)} (now {current(new, k)})"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(out) or "same flags"


def _variant(r: dict) -> str:
    return r.get("variant", "pi_dec")  # summaries from before the variants are Policy Decorator's


def _stat(values, fmt="{:.2f}") -> str:
    values = np.asarray(values, dtype=float)
    return fmt.format(values.mean()) + (f" ± {fmt.format(values.std(ddof=1))}" if len(values) > 1 else "")


def _protocol(rs: list[dict]) -> str:
    """How a row's budget was chosen: on validation seeds (runs made with --split test), or looking at the test
    seeds themselves (every run before the protocol)."""
    return "val → test" if all(r.get("split") == "test" for r in rs) else "chosen on test seeds"


def _strict(rs: list[dict], key: str) -> str:
    """DAPG's success rate of a row, over the runs that measured it."""
    values = [r[key] for r in rs if key in r]
    if not values:
        return ""
    return _stat(values) + (f" ({len(values)} of {len(rs)})" if len(values) < len(rs) else "")


def report(results: Path = RESULTS, readme: Path | None = ROOT / "README.md") -> str:
    """Rebuild <results>/README.md, <results>/success.png and (if given) the README's results block from the JSONs."""
    results.mkdir(parents=True, exist_ok=True)
    runs = [json.loads(p.read_text()) for p in sorted((results / "runs").glob("*.json"))]
    groups: dict[tuple, list] = {}  # runs of one (task, base, variant) with different budgets are separate rows
    for r in runs:
        groups.setdefault((r["task"], r["base"], _variant(r), _budget_key(r)), []).append(r)
    earlier = []  # notes on rows whose budget is no longer the one in BUDGETS: what changed since
    labelled = {}  # (task, base label) -> Policy Decorator's runs, for the row labels and the plot
    variants = {}  # (task, base) -> {variant: runs} at the current budget
    for task, base, variant, key in sorted(groups):
        rs, current = groups[(task, base, variant, key)], BUDGETS.get((task, base))
        current = current and variant in VARIANTS and variant_budget(current, variant, base)
        if current and _budget_key(current) == key:
            variants.setdefault((task, base), {})[variant] = rs
            if variant == "pi_dec":
                labelled[(task, base)] = rs
            continue
        label = base if variant == "pi_dec" else f"{base}, {variant}"
        n = sum(t == task and l.startswith(f"{label} (earlier") for t, l in labelled)  # several: number them
        label = f"{label} (earlier settings{f' {n + 1}' if n else ''})"
        earlier.append(f"{task} / {label}: {_changes(rs[0], current) if current else 'budget removed'}.")
        labelled[(task, label)] = rs

    def table(rows: dict) -> str:
        lines = ["| task | base | seeds | online env steps | base success | Policy Decorator success | "
                 "episode length | jerk base | jerk refined | wall time / run | budget |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (task, label), rs in rows.items():
            known = [r for r in rs if "len_base" in r]  # summaries before 2026-12 lack the episode length
            length = (f"{_stat([r['len_base'] for r in known], '{:.0f}')} → "
                      f"{_stat([r['len_refined'] for r in known], '{:.0f}')}" if known else "?")
            lines.append(f"| {task} | {label} | {len(rs)} | {rs[0]['online_env_steps']:,} | "
                         f"{_stat([r['success_base'] for r in rs])} | {_stat([r['success_refined'] for r in rs])} | "
                         f"{length} | {_stat([r['jerk_base'] for r in rs], '{:.1e}')} | "
                         f"{_stat([r['jerk_refined'] for r in rs], '{:.1e}')} | "
                         f"{np.mean([r['wall_seconds'] for r in rs]) / 60:.0f} min | {_protocol(rs)} |")
        if not rows:
            lines.append("| (no runs yet) | | | | | | | | | | |")
        return "\n".join(lines)

    full = table(labelled)  # results/README.md: every budget; the README: the current ones only
    current = table({k: rs for k, rs in labelled.items() if "(earlier" not in k[1]})
    ablations = "\n\n".join(_ablation_table(task, base, vs) for (task, base), vs in sorted(variants.items())
                             if len(vs) > 1)
    notes = (f"Success over {len(TEST_SEEDS)} test episodes (the same seeds for base and refined policy), mean ± "
             "sample std over seeds. Episode length: steps (200: time limit). Jerk: mean squared jerk of the executed "
             "actions (2nd difference of ManiSkill2's delta actions, 3rd of Adroit's joint targets; lower is smoother). "
             "Budget: \"val → test\" if frozen on validation seeds first. Machines: "
             + ", ".join(sorted({r.get('machine', '?') for r in runs}))
             + ". Command: `python -m pi_dec.results run --task <task> --base <base> --seed <seed> --split test`.")
    (results / "README.md").write_text("# Results\n\n" + full + "\n\n" + notes + "".join(f"\n\n{e}" for e in earlier)
                                       + (f"\n\n## Ablations and baselines\n\n{ablations}" if ablations else "")
                                       + "\n\n" + _per_run(labelled, variants) + "\n" + _validation(results))
    _plot(variants, results / "success.png")
    if readme is None:
        return full
    text = readme.read_text()
    block = (f"<!-- results:start -->\n{current}\n\n{notes} Earlier settings and every run, seed by seed: "
             "[results/README.md](results/README.md)."
             + (f"\n\n{ablations}" if ablations else "") + "\n<!-- results:end -->")
    text = re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda _: block, text, flags=re.S)
    readme.write_text(text)
    print(full + (f"\n\n{ablations}" if ablations else ""))
    return full


def _ablation_table(task: str, base: str, variants: dict) -> str:
    """Policy Decorator beside its ablations and the base alone, on the same bases and test seeds. Time is the
    online stage's: the variants share one base, and the first of a seed's runs also pays its evaluations."""
    lines = [f"{task} / {base}: every variant on the same base policies and test seeds, at the same env-step budget.",
             "", "| variant | seeds | success | DAPG success | episode length | jerk | online env steps | "
             "online stage / run |", "|---|---|---|---|---|---|---|---|"]
    ours = variants.get("pi_dec", [])
    if ours:  # the base alone: the online sampler, then (no interaction) the others
        lines.append(f"| base alone (as sampled online) | {len(ours)} | {_stat([r['success_base'] for r in ours])} | "
                     f"{_strict(ours, 'success_strict_base')} | {_stat([r['len_base'] for r in ours], '{:.0f}')} | "
                     f"{_stat([r['jerk_base'] for r in ours], '{:.1e}')} | 0 | |")
        for sampler in ours[0].get("success_base_samplers", {}):
            rs = [r for r in ours if sampler in r.get("success_base_samplers", {})]
            lines.append(f"| base alone, {sampler.upper()} | {len(rs)} | "
                         f"{_stat([r['success_base_samplers'][sampler] for r in rs])} | | "
                         f"{_stat([r['len_base_samplers'][sampler] for r in rs], '{:.0f}')} | | 0 | |")
    for variant in VARIANTS:
        if rs := variants.get(variant):
            lines.append(f"| {VARIANTS[variant][0]} | {len(rs)} | {_stat([r['success_refined'] for r in rs])} | "
                         f"{_strict(rs, 'success_strict_refined')} | {_stat([r['len_refined'] for r in rs], '{:.0f}')} | "
                         f"{_stat([r['jerk_refined'] for r in rs], '{:.1e}')} | {rs[0]['online_env_steps']:,} | "
                         f"{np.mean([r['seconds']['online'] for r in rs]) / 60:.0f} min |")
    return "\n".join(lines)


def _per_run(labelled: dict, variants: dict) -> str:
    """One line per summary (the tables above average them): what each seed gave, where and when."""
    lines = ["## Every run", "", "| task | base | seed | success | episode length | jerk | wall time | commit |",
             "|---|---|---|---|---|---|---|---|"]
    rows = dict(labelled)
    rows |= {(t, f"{b}, {v}"): rs for (t, b), vs in variants.items() for v, rs in vs.items() if v != "pi_dec"}
    for (task, label), rs in rows.items():
        for r in sorted(rs, key=lambda r: r["seed"]):
            length = (f"{r['len_base']:.0f} → {r['len_refined']:.0f}" if "len_base" in r else "?")
            lines.append(f"| {task} | {label} | {r['seed']} | {r['success_base']:.2f} → {r['success_refined']:.2f} | "
                         f"{length} | {r['jerk_base']:.1e} → {r['jerk_refined']:.1e} | "
                         f"{r['wall_seconds'] / 60:.0f} min | {r.get('commit', '?')} |")
    return "\n".join(lines) + "\n"


def _validation(results: Path) -> str:
    """The validation runs and base curves (results/val/): what chose each budget."""
    found = [json.loads(p.read_text()) for p in sorted((results / "val").glob("*.json"))]
    if not found:
        return ""
    lines = ["## Validation (what chose the budgets; validation seeds, never the test seeds)", ""]
    for v in found:
        if "points" in v:  # a base curve
            samplers = [k for k in v["points"][0] if k != "iters"]
            curve = "; ".join(f"{p['iters']:,}: " + " / ".join(f"{p[k]:.2f}" for k in samplers) for p in v["points"])
            made = f" (`{' '.join(v['demo_args'])}`)" if v.get("demo_args") else ""
            lines.append(f"- {v['task']} / {v['base']} base alone, {v['num_demos']} demos{made}, seed {v['seed']}, "
                         f"{v['episodes']} episodes ({' / '.join(samplers)}) by training iterations: {curve}")
        else:
            now = BUDGETS.get((v["task"], v["base"]))
            changes = _changes(v, variant_budget(now, _variant(v), v["base"])) if now else "no budget in the code"
            lines.append(f"- {v['task']} / {v['base']}, {_variant(v)}, seed {v['seed']}: {v['success_base']:.2f} → "
                         f"{v['success_refined']:.2f} ({v.get('commit', '?')}; {changes})")
    return "\n".join(lines) + "\n"


def _plot(variants: dict, png: Path) -> None:
    """One small panel per (task, base) at the current budget: each variant's in-training success over env
    steps (mean over seeds, band: min to max), its final test success (star), the base alone (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not variants:
        return
    keys = sorted(variants)
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=110, squeeze=False, sharey=True)
    for ax, (task, base) in zip(axes.flat, keys):
        for i, (variant, rs) in enumerate((v, variants[(task, base)][v]) for v in VARIANTS
                                          if v in variants[(task, base)]):
            color, steps = f"C{i}", rs[0]["online_env_steps"]
            curves = [np.array(r["curve"]) for r in rs if r.get("curve")]
            if curves and len({len(c) for c in curves}) == 1:
                x, ys = curves[0][:, 0], np.stack([c[:, 1] for c in curves])
                ax.plot(x, ys.mean(0), color=color, label=VARIANTS[variant][0].split(" (")[0])
                ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, linewidth=0)
            ax.plot([steps], [np.mean([r["success_refined"] for r in rs])], marker="*", markersize=9,
                    color=color, linestyle="none", label=None if curves else VARIANTS[variant][0].split(" (")[0])
            if variant == "pi_dec":
                ax.axhline(np.mean([r["success_base"] for r in rs]), color="gray", linestyle="--", label="base")
        ax.set_title(f"{task.replace('Sparse-v1', '').replace('AdroitHand', 'Adroit ')} / {base}", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(0, 1.05 * max(rs[0]["online_env_steps"] for rs in variants[(task, base)].values()))
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:.0f}k")
        ax.tick_params(labelsize=7)
        ax.set_xlabel("online env steps", fontsize=7)
        ax.legend(fontsize=6, loc="lower right")
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("success", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def add_place_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of Places and of a budget file (run and the sweep take them alike)."""
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="summaries (runs/, val/) and the report")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output", help="run folders")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data", help="demonstrations, <data-dir>/<task>/")
    parser.add_argument("--budget-file", type=Path,
                        help='JSON {"<task>/<base>": {Budget fields}} replacing those budgets of pi_dec/results.py')


def _sampler(text: str) -> tuple[str, int]:
    """'ddpm20' -> ("ddpm", 20)."""
    m = re.fullmatch(r"(ddpm|ddim)(\d+)", text)
    if not m or not 1 <= int(m[2]) <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a sampler is ddpm<steps> or ddim<steps>, steps 1-100 (ddpm20)")
    return m[1], int(m[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tasks = sorted({t for t, _ in BUDGETS})
    r = sub.add_parser("run", help="run one experiment: results/runs/ (test seeds) or results/val/ (validation)")
    r.add_argument("--task", required=True, choices=tasks)
    r.add_argument("--base", required=True, choices=["diffusion", "bet"])
    r.add_argument("--seed", type=int, default=1)
    r.add_argument("--split", required=True, choices=list(SPLITS),
                   help="val: choosing a budget or flag; test: the reported number, once the budget is frozen")
    r.add_argument("--variant", default="pi_dec", choices=list(VARIANTS),
                   help="; ".join(f"{k}: {v[0]}" for k, v in VARIANTS.items()))
    add_place_flags(r)
    c = sub.add_parser("base-curve", help="the base alone over training iterations, on validation seeds")
    c.add_argument("--task", required=True, choices=tasks)
    c.add_argument("--base", required=True, choices=["diffusion", "bet"])
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--num-demos", type=int, required=True)
    c.add_argument("--total-iters", type=int, default=10_000)
    c.add_argument("--every", type=int, default=1_000, help="a checkpoint (and an evaluation) every N iterations")
    c.add_argument("--samplers", type=_sampler, nargs="+", default=[("ddpm", 6), ("ddpm", 20)],
                   help="Diffusion Policy samplers to evaluate each checkpoint with (ignored for BeT)")
    c.add_argument("--episodes", type=int, default=50, help="validation episodes per evaluation")
    c.add_argument("--offline-run", type=Path, help="evaluate this finished offline run instead of training one")
    c.add_argument("--demo-args", help="demo generation flags instead of the budget's, e.g. "
                                       "'--action-noise 0.2 --record-executed' (a way to weaken the data)")
    st = sub.add_parser("strict", help="add DAPG's stricter Adroit success rate to summaries made without it "
                                       "(evaluates their run folders' final checkpoints)")
    st.add_argument("--split", required=True, choices=list(SPLITS))
    add_place_flags(st)
    sub.add_parser("report", help="rebuild results/README.md, results/success.png and the README section")
    args = parser.parse_args()
    from pi_dec.run import stop_on_sigterm

    stop_on_sigterm()  # a stopped run takes its running stage with it (subprocess.run kills it)
    try:
        _main(args)
    except KeyboardInterrupt:
        print("\nstopped: finished stages are kept (a rerun reuses a finished base policy)", file=sys.stderr)
        raise SystemExit(130) from None


def _main(args) -> None:
    from pi_dec.run import COUNT, SEED, UsageError, check_numbers, user_errors

    with user_errors():
        if args.cmd in ("run", "base-curve"):
            check_numbers(args, {"seed": SEED} | ({"num_demos": COUNT, "total_iters": COUNT, "every": COUNT,
                                                   "episodes": COUNT} if args.cmd == "base-curve" else {}))
            if (args.task, args.base) not in BUDGETS:
                bases = sorted(b for t, b in BUDGETS if t == args.task)
                raise UsageError(f"--base {args.base}: no budget for {args.task} with this base; use --base "
                                 f"{' or '.join(bases)} (budgets: pi_dec/results.py).")
        if args.cmd == "run":
            places = Places(args.results_dir, args.output_dir, args.data_dir)
            places.check()
            budgets = load_budgets(args.budget_file)
            if (args.task, args.base) not in budgets:
                raise UsageError(f"--base {args.base}: no budget for {args.task} with this base (--budget-file).")
            run(args.task, args.base, args.seed, args.split, args.variant, places, budgets)
            report(places.results, ROOT / "README.md" if places.results == RESULTS else None)
        elif args.cmd == "strict":
            places = Places(args.results_dir, args.output_dir, args.data_dir)
            places.check()
            if add_strict(args.split, places, load_budgets(args.budget_file)):
                report(places.results, ROOT / "README.md" if places.results == RESULTS else None)
            else:
                print(f"nothing added: every Adroit summary of {args.split} in {places.results} has DAPG's rate, "
                      "or its run folder is not under this repository")
        elif args.cmd == "base-curve":
            if args.offline_run and not (args.offline_run / "checkpoints").is_dir():
                raise UsageError(f"--offline-run {args.offline_run}: not an offline run folder (no checkpoints/).")
            samplers = args.samplers if args.base == "diffusion" else [("bet", 0)]
            base_curve(args.task, args.base, args.seed, args.num_demos, args.total_iters, args.every, samplers,
                       args.episodes, args.offline_run, args.demo_args.split() if args.demo_args else None)
        else:
            report()


if __name__ == "__main__":
    main()
