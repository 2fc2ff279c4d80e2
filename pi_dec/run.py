"""Run plumbing shared by every script: flag checks, output folder, args.json, tensorboard/wandb, seeding,
device, atomic checkpoint writes, RNG states for checkpoints, evaluation episodes, and a small step timer."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
import signal
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pi_dec.make_env import finished_episodes
from pi_dec.errors import INPUT_ERRORS, UnknownEnvError, UsageError  # noqa: F401  (re-exported)


@dataclasses.dataclass
class RunArgs:
    """Flags every script shares: the experiment, tracking, device, and which models an env loads."""

    exp_name: str = "test"
    """name of this experiment (last part of the run folder)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when available"""
    num_threads: int | None = None
    """torch CPU threads (default: half the cores)"""
    track: bool = False
    """track with Weights and Biases"""
    wandb_project_name: str = "policy_decorator"
    """wandb project"""
    wandb_entity: str | None = None
    """wandb entity (team)"""
    capture_video: bool = False
    """record videos of the evaluation episodes (run folder/videos)"""

    output_dir: str = "output"
    """root folder of runs"""
    sync_venv: bool = False
    """envs in this process instead of worker processes"""
    obj_ids: list[str] = dataclasses.field(default_factory=list)
    """PartNet-Mobility model ids for TurnFaucet/PushChair (default: the held-out ones)"""
    asset_root: str | None = None
    """folder of PartNet-Mobility models (default: $MS2_ASSET_DIR/partnet_mobility/dataset)"""
    model_json: str | None = None
    """PartNet-Mobility model json (default: ManiSkill2's)"""


def cli_flag(name: str) -> str:
    """The command-line flag of an args field: "q_lr" -> "--q-lr" (tyro's spelling)."""
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------------ #
# Numeric flags: {field: (test, what is allowed)}, checked before anything starts. None passes: in the
# flags typed `X | None` it means the default or "off", as their help says.
# ------------------------------------------------------------------------------------------------ #
def at_least(low: int, note: str = "") -> tuple:
    return (lambda v: v >= low), f"at least {low}{note}"


def between(low: float, high: float) -> tuple:
    return (lambda v: low <= v <= high), f"between {low} and {high}"


COUNT = at_least(1)
POSITIVE = (lambda v: v > 0), "> 0"
SEED = (lambda v: 0 <= v < 2**31), "between 0 and 2147483647"  # numpy wants < 2**32; envs add offsets

RUN_RULES = {"seed": SEED, "num_threads": at_least(1, " (leave it out for half the cores)")}
# The flags both offline scripts share.
OFFLINE_RULES = RUN_RULES | {
    "num_demo_traj": at_least(1, " (leave it out for all)"), "total_iters": COUNT, "batch_size": COUNT,
    "lr": POSITIVE, "log_freq": COUNT, "eval_freq": at_least(0, " (0: no evaluation)"),
    "save_freq": at_least(0, " (0 or None: only best.pt)"), "num_eval_episodes": COUNT, "num_eval_envs": COUNT,
}


def check_numbers(args, rules: dict) -> None:
    """UsageError "--flag VALUE: must be <allowed>." for the first field of `args` that breaks its rule;
    NaN and infinity never pass. A list flag passes if the test accepts the whole list."""
    for name, (ok, allowed) in rules.items():
        value = getattr(args, name)
        if value is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not (all(math.isfinite(v) for v in values) and ok(value)):
            raise UsageError(f"{cli_flag(name)} {' '.join(map(str, values))}: must be {allowed}.")


def check_eval_episodes(args) -> None:
    """Each evaluation runs whole rounds of episodes on its envs."""
    if args.num_eval_episodes % min(args.num_eval_envs, args.num_eval_episodes):
        raise UsageError(f"--num-eval-episodes {args.num_eval_episodes}: must be a multiple of --num-eval-envs "
                         f"({args.num_eval_envs}).")


def default_threads() -> int:
    """Half the cores: on a shared 2-core machine one torch thread beat two by 1.3-2.9x (env workers
    and the data pipeline need the other core)."""
    return max(1, (os.cpu_count() or 2) // 2)


def setup_torch(seed: int, cuda: bool, num_threads: int | None, deterministic: bool = True) -> torch.device:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.set_num_threads(num_threads or default_threads())
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_states() -> dict:
    """The python, numpy and torch global RNG states as tensors and plain values, which a checkpoint
    loaded with torch.load(weights_only=True) can hold (numpy's own state object is refused there)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                      "gauss": float(gauss)}}


def set_rng_states(states: dict) -> None:
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(states["torch"])


class Run:
    """The run folder `<output_dir>/<env_id>/<algo>/<date-time>_<seed>_<exp_name>/` with args.json,
    tensorboard events (and wandb with --track) and checkpoints/."""

    def __init__(self, args, algo_name: str, script: str, path: str | Path | None = None, extra: dict | None = None):
        config = dataclasses.asdict(args) | {"algo_name": algo_name, "script": script} | (extra or {})
        if path is None:
            tag = f"{datetime.datetime.now().strftime('%y%m%d-%H%M%S')}_{args.seed}"
            tag += f"_{args.exp_name}" if args.exp_name else ""
            path = Path(args.output_dir) / args.env_id / algo_name / tag
        self.path = Path(path)
        for folder in (self.path, *self.path.parents):  # a file where a folder goes: one line, not mkdir's traceback
            if folder.exists():
                if not folder.is_dir():
                    raise UsageError(f"--output-dir {args.output_dir}: {folder} is a file, not a folder; "
                                     "pass another --output-dir or move the file.")
                break
        self.name = str(self.path.relative_to(args.output_dir)) if self.path.is_relative_to(args.output_dir) else self.path.name
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "args.json").exists():
            atomic_write_text(self.path / "args.json", json.dumps(config, indent=4))
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=config, name=self.name.replace(os.sep, "__"), save_code=True,
                       dir=str(self.path), resume="allow", id=self.name.replace(os.sep, "__")[-128:])
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.path))
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" +
                             "\n".join(f"|{k}|{v}|" for k, v in config.items()))
        self.ckpt_dir = self.path / "checkpoints"
        self.start_time = time.time()
        self.best_success = -1.0

    def log(self, scalars: dict, step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, float(value), step)

    def record_eval(self, result: dict, step: int) -> bool:
        """Log an evaluation under eval/; True if its success rate is the best so far."""
        self.log({f"eval/{k}": np.mean(v) for k, v in result.items()}, step)
        success = float(np.mean(result["success"]))
        tqdm.write(f"step {step}: eval success {success:.3f} over {len(result['success'])} episodes")
        best = success > self.best_success
        self.best_success = max(self.best_success, success)
        return best

    def save(self, obj, tag: str) -> Path:
        path = self.ckpt_dir / f"{tag}.pt"
        atomic_torch_save(obj, path)
        return path

    def close(self) -> None:
        self.writer.close()


def offline_eval_envs(args, window: int, obs_dim: int, act_dim: int, run: Run, env_kwargs: dict,
                      act_chunks: bool = True, obs_mode: str = "state"):
    """Evaluation envs of an offline run, seeded once; None when no evaluation will run (they are worker
    processes, so they are not started for nothing). With obs_mode "rgbd", obs_dim is the state vector's."""
    from pi_dec.make_env import make_vec_env

    if not args.eval_freq or args.eval_freq > args.total_iters:
        return None
    envs = make_vec_env(args.env_id, min(args.num_eval_envs, args.num_eval_episodes), args.seed + 1000,
                        args.control_mode, window, video_dir=str(run.path / "videos") if args.capture_video else None,
                        env_kwargs=env_kwargs, asynchronous=not args.sync_venv, act_chunks=act_chunks, obs_mode=obs_mode)
    envs.reset(seed=args.seed + 1000)  # seeded once; evaluations continue from here
    obs_space = envs.single_observation_space["state"] if obs_mode == "rgbd" else envs.single_observation_space
    if obs_space.shape != (window, obs_dim) or envs.single_action_space.shape != (act_dim,):
        raise UsageError(f"{args.env_id} ({args.control_mode}) has observations {obs_space.shape[1:]} "
                         f"and actions {envs.single_action_space.shape}, the demonstrations ({obs_dim},) and ({act_dim},).")
    return envs


def obs_tensor(obs, device):
    """State windows (N, T, obs_dim) as float32; RGB-D windows as a dict of tensors (images stay uint8)."""
    if isinstance(obs, dict):
        return {k: torch.as_tensor(v, device=device) for k, v in obs.items()}
    return torch.as_tensor(obs, dtype=torch.float32, device=device)


def reset_at_ends(act, done: np.ndarray) -> None:
    """Tell a policy with per-episode state (`act.reset`, a base's: pi_dec/frozen_base.py) which envs' episodes ended."""
    if hasattr(act, "reset") and done.any():
        act.reset(done)


def run_episodes(n: int, act, envs) -> dict[str, list]:
    """Step `envs` with `act(obs)` until `n` episodes have ended; return, length and success of each.

    NOTE(original): envs are reset without a seed: they were seeded once when created, so successive
    evaluations see new episodes (and may end with a few more than n).
    """
    result = defaultdict(list)
    obs, _ = envs.reset()
    reset_at_ends(act, np.ones(envs.num_envs, dtype=bool))
    while len(result["success"]) < n:
        obs, _, terminated, truncated, infos = envs.step(act(obs))
        reset_at_ends(act, terminated | truncated)
        for info in finished_episodes(infos):
            result["return"].append(float(np.ravel(info["episode"]["r"])[0]))
            result["len"].append(int(np.ravel(info["episode"]["l"])[0]))
            result["success"].append(float(info["success"]))
    return result


class StepTimer:
    """Wall time per named phase, for the `time/` tensorboard tags."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.totals[name] += now - self.last
        self.last = now

    def scalars(self, prefix: str = "time/") -> dict:
        return {f"{prefix}{k}": v for k, v in self.totals.items()}


def stop_on_sigterm() -> None:
    """SIGTERM (`kill`, a cluster scheduler's time limit) stops this process as Ctrl-C does, by KeyboardInterrupt,
    so that it stops the experiments it started; Ray's driver handler would exit and leave them on the cores."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


class user_errors:
    """Context manager for scripts' __main__: known input errors end the program with one clear line
    (exit status 2) instead of a traceback."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, INPUT_ERRORS):
            import sys

            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2)
        return False
