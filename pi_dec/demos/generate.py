"""Record scripted demonstrations with ManiSkill2's RecordEpisode and convert them with its replay tool.

Pipeline (what `python -m pi_dec.demos` runs):
1. `record_shard` (one per worker process): reset with a seed, run the task's solver in `pd_joint_pos`,
   keep the episode only if it succeeded. Worker w of P tries seeds seed+w, seed+w+P, ...
2. `merge_h5` (ManiSkill2's) joins the shards into `<out>/trajectory.none.pd_joint_pos.h5`.
3. `convert` replays them into each target control mode with state observations; the replay tool
   keeps only episodes that still succeed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import gymnasium as gym

import pi_dec  # noqa: F401  (Vulkan set-up before sapien)
from pi_dec.suites import MAX_EPISODE_STEPS  # every Policy Decorator task's time limit


def record_shard(env_id: str, out_dir: str, first_seed: int, stride: int, want: int, max_attempts: int,
                 progress=None) -> dict:
    """Try seeds first_seed, first_seed+stride, ... until `want` successes or `max_attempts` tries.

    Returns {'path', 'attempts', 'successes', 'seeds_failed', 'lengths'}.
    """
    import pi_dec.envs  # noqa: F401
    from mani_skill2.utils.wrappers import RecordEpisode

    quiet_libraries()

    from pi_dec.demos.planner import PlanningFailed
    from pi_dec.demos.solvers import solve

    env = gym.make(env_id, obs_mode="none", control_mode="pd_joint_pos", reward_mode="sparse")
    # save_on_reset=False: we flush successful episodes ourselves. ManiSkill2's close() renumbers the h5
    # groups but not the JSON when episodes are dropped, so a dropped attempt also steps the episode
    # counter back (as the replay tool does) and ids stay consecutive in both files.
    env = RecordEpisode(env, out_dir, save_trajectory=True, trajectory_name="trajectory", save_video=False,
                        save_on_reset=False)
    stats = {"path": str(Path(out_dir) / "trajectory.h5"), "attempts": 0, "successes": 0,
             "seeds_failed": [], "lengths": []}
    seed = first_seed
    while stats["successes"] < want and stats["attempts"] < max_attempts:
        env.reset(seed=seed)
        stats["attempts"] += 1
        try:
            info = solve(env, env_id)
            ok = bool(info["success"])
        except PlanningFailed:
            ok = False
        if ok:
            env.flush_trajectory()
            stats["successes"] += 1
            stats["lengths"].append(int(info["elapsed_steps"]))
        else:
            env._episode_id -= 1
            stats["seeds_failed"].append(seed)
        if progress is not None:
            progress.put(ok)
        seed += stride
    env.close()
    fix_env_info(stats["path"])
    return stats


def quiet_libraries() -> None:
    """Silence warnings that say nothing to a user here (deprecated wrapper access, no git checkout)."""
    gym.logger.set_level(gym.logger.ERROR)
    logging.getLogger("mani_skill2").setLevel(logging.ERROR)


def fix_env_info(h5_path: str) -> None:
    """gymnasium 0.29 leaves `max_episode_steps: null` in the JSON's env_info; the tasks use 200."""
    json_path = Path(h5_path).with_suffix(".json")
    data = json.loads(json_path.read_text())
    if data["env_info"].get("max_episode_steps") is None:
        data["env_info"]["max_episode_steps"] = MAX_EPISODE_STEPS
    json_path.write_text(json.dumps(data, indent=2))


def merge_shards(shard_paths: list[str], out_path: str) -> None:
    from mani_skill2.trajectory.merge_trajectory import merge_h5

    with contextlib.redirect_stdout(io.StringIO()):  # it prints every file name
        merge_h5(out_path, shard_paths)
    fix_env_info(out_path)


def convert(raw_h5: str, control_mode: str, num_procs: int = 1, obs_mode: str = "state", count: int | None = None,
            same_mode: bool = False, extra: tuple[str, ...] = ()) -> Path:
    """Replay `raw_h5` into `control_mode` with `obs_mode` observations; returns the new h5 path.

    Runs ManiSkill2's replay tool (through `pi_dec.demos.replay`, which knows our -v2 ids) in a child
    process. Episodes that fail after conversion are dropped by the tool. `same_mode`: the file is already
    in `control_mode` (the tool then replays it as it is; it refuses a "conversion" to the same mode).
    """
    args = ["--traj-path", raw_h5, "--obs-mode", obs_mode, *([] if same_mode else ["--target-control-mode", control_mode]),
            "--save-traj", "--num-procs", str(num_procs), *(["--count", str(count)] if count else []), *extra]
    result = subprocess.run([sys.executable, "-m", "pi_dec.demos.replay", *args], capture_output=True, text=True)
    out = Path(raw_h5).with_name(Path(raw_h5).stem + f".{obs_mode}.{control_mode}.h5")
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"conversion to {control_mode} failed:\n{result.stderr[-3000:]}")
    fix_env_info(str(out))
    return out


def episode_lengths(h5_path) -> list[int]:
    return [ep["elapsed_steps"] for ep in json.loads(Path(h5_path).with_suffix(".json").read_text())["episodes"]]
