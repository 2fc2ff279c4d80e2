"""Adroit demonstrations from the DAPG expert policies, in the ManiSkill2 trajectory format our loader reads.

The experts are small tanh MLPs stored as numpy arrays in a folder outside this repository (default
`../shared/adroit`, see its README); this module reads them, it does not ship them. Each episode:

    reset(seed) -> act = expert(obs) [+ N(0, action_noise^2) executed, not recorded] -> ... first success
    -> `extra_steps` more steps (kept in the demo) -> stop

Only episodes that succeed are kept. With noise, the env is driven off the expert's path while the
recorded label stays the expert's own action there (DART-style: the demos then show how to recover).
The extra steps matter because a learned policy reaches success a little later than its teacher: a demo
that stops at the exact success step never shows what to do just before it.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np

from pi_dec.run import atomic_write_text
from pi_dec.suites import MAX_EPISODE_STEPS, AdroitSuite, UsageError

EXPERT_FILES = {"AdroitHandDoorSparse-v1": "door_expert.npz", "AdroitHandHammerSparse-v1": "hammer_expert.npz",
                "AdroitHandPenSparse-v1": "pen_expert.npz", "AdroitHandRelocateSparse-v1": "relocate_expert.npz"}


class ExpertPolicy:
    """The DAPG expert's mean action: tanh MLP on normalized observations, rescaled, clipped to [-1, 1]."""

    def __init__(self, path: str | Path):
        with np.load(path) as f:
            self.params = {k: np.asarray(f[k], dtype=np.float64) for k in f.files}
        self.layers = [(self.params[f"W{i}"], self.params[f"b{i}"])
                       for i in range(len(self.params["layer_sizes"]) - 1)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        p = self.params
        x = (obs - p["in_shift"]) / (p["in_scale"] + 1e-8)
        for i, (W, b) in enumerate(self.layers):
            x = W @ x + b
            if i < len(self.layers) - 1:
                x = np.tanh(x)
        return np.clip(x * p["out_scale"] + p["out_shift"], -1.0, 1.0)


def load_expert(env_id: str, expert_dir: str | Path) -> ExpertPolicy:
    path = Path(expert_dir) / EXPERT_FILES[env_id]
    if not path.is_file():
        raise UsageError(f"Adroit expert policy {path} not found: pass --expert-dir <folder with "
                         f"{EXPERT_FILES[env_id]}> (the DAPG experts as .npz, see ../shared/adroit/README.md), or "
                         "use the Minari human demos instead (README, 'Adroit').")
    try:
        return ExpertPolicy(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise UsageError(f"{path} is not an expert policy .npz ({err}).") from None


def record_episode(env, expert: ExpertPolicy, seed: int, action_noise: float, extra_steps: int,
                   rng: np.random.Generator, record_executed: bool = False) -> dict | None:
    """One expert episode; None if it did not succeed within the time limit. The recorded action is the
    expert's, or with `record_executed` the noisy one the env executed (as a teleoperator's demos hold theirs)."""
    obs, _ = env.reset(seed=seed)
    observations, actions, first_success = [obs], [], None
    for t in range(MAX_EPISODE_STEPS):
        label = expert(obs)
        executed = np.clip(label + action_noise * rng.standard_normal(label.shape), -1.0, 1.0) if action_noise else label
        obs, _, _, _, info = env.step(executed)
        observations.append(obs)
        actions.append(executed if record_executed else label)
        if first_success is None and info["success"]:
            first_success = t
        if first_success is not None and t >= first_success + extra_steps:
            break
    if first_success is None:
        return None
    return {"obs": np.asarray(observations, np.float32), "actions": np.asarray(actions, np.float32),
            "seed": seed, "first_success": first_success}


def write_trajectories(path: Path, env_id: str, episodes: list[dict]) -> None:
    """ManiSkill2's trajectory layout: traj_<i>/{obs, actions} in .h5, env_info and episodes in .json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as h5:
        for i, ep in enumerate(episodes):
            h5.create_dataset(f"traj_{i}/obs", data=ep["obs"])
            h5.create_dataset(f"traj_{i}/actions", data=ep["actions"])
    tmp.replace(path)
    mode = AdroitSuite.default_control_mode
    meta = {"env_info": {"env_id": env_id, "max_episode_steps": MAX_EPISODE_STEPS,
                         "env_kwargs": {"obs_mode": "state", "control_mode": mode}},
            "episodes": [{"episode_id": i, "episode_seed": ep["seed"], "elapsed_steps": len(ep["actions"]),
                          "control_mode": mode, "first_success": ep["first_success"], "success": True}
                         for i, ep in enumerate(episodes)]}
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def generate(env_id: str, num_demos: int, out: Path, seed: int, max_attempts: int, expert_dir: str,
             action_noise: float, extra_steps: int, record_executed: bool = False) -> dict:
    """Roll out the expert on seeds seed, seed+1, ... until `num_demos` successes; write out/trajectory.h5."""
    expert = load_expert(env_id, expert_dir)
    env = AdroitSuite.make(env_id, None, "state", None, {}, None)
    dims = expert.layers[0][0].shape[1], expert.layers[-1][0].shape[0]
    if dims != (env.observation_space.shape[0], env.action_space.shape[0]):
        raise UsageError(f"{Path(expert_dir) / EXPERT_FILES[env_id]} maps {dims[0]} observations to {dims[1]} actions, "
                         f"{env_id} has {env.observation_space.shape[0]} and {env.action_space.shape[0]}: "
                         "the expert of another task?")
    rng = np.random.default_rng(seed)
    start, episodes, failed = time.time(), [], []
    attempt = 0
    while len(episodes) < num_demos and attempt < max_attempts:
        ep = record_episode(env, expert, seed + attempt, action_noise, extra_steps, rng, record_executed)
        (episodes.append(ep) if ep else failed.append(seed + attempt))
        attempt += 1
    env.close()
    if not episodes:
        raise SystemExit(f"No successful expert episode in {attempt} attempts for {env_id} "
                         f"(--action-noise {action_noise} may be too large).")
    write_trajectories(out / "trajectory.h5", env_id, episodes)
    lengths = [len(ep["actions"]) for ep in episodes]
    summary = {"env_id": env_id, "source": f"expert {Path(expert_dir) / EXPERT_FILES[env_id]}", "seed": seed,
               "action_noise": action_noise, "record_executed": record_executed, "extra_steps": extra_steps,
               "attempts": attempt,
               "successes": len(episodes), "success_rate": len(episodes) / attempt, "failed_seeds": failed,
               "length_min": min(lengths), "length_mean": sum(lengths) / len(lengths), "length_max": max(lengths),
               "converted": {AdroitSuite.default_control_mode: {"file": str(out / "trajectory.h5"),
                                                                "episodes": len(episodes)}},
               "total_seconds": round(time.time() - start, 1)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    print(f"{env_id}: {len(episodes)}/{attempt} expert episodes succeeded (noise {action_noise}), steps "
          f"{min(lengths)}-{max(lengths)}, {summary['total_seconds']:.0f} s -> {out / 'trajectory.h5'}")
    return summary
