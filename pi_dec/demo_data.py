"""Load ManiSkill2 demonstration files (`trajectory.h5` + `trajectory.json`) for the offline scripts.

Every way a file can be wrong ends in one `DemoFileError` whose message names the problem and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from pi_dec.errors import DemoFileError  # noqa: F401  (re-exported)

GENERATE_HINT = ("Generate demonstrations with `python -m pi_dec.demos --env-id <task> --out <folder>` "
                 "(see README), or put the official files at this path.")


def _episodes(json_path: Path, h5_path: Path) -> tuple[dict, list]:
    if not json_path.exists():
        raise DemoFileError(f"{json_path} is missing: a ManiSkill2 trajectory file comes as a pair "
                            f"({h5_path.name} + {json_path.name}). {GENERATE_HINT}")
    try:
        meta = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DemoFileError(f"{json_path} is not valid JSON ({err}). {GENERATE_HINT}") from None
    if (not isinstance(meta, dict) or not isinstance(meta.get("env_info"), dict)
            or not isinstance(meta.get("episodes"), list)
            or not all(isinstance(ep, dict) and "episode_id" in ep for ep in meta["episodes"])):
        raise DemoFileError(f"{json_path} is not a ManiSkill2 trajectory JSON (needs 'env_info' and "
                            f"'episodes' with their 'episode_id'). {GENERATE_HINT}")
    return meta["env_info"], meta["episodes"]


def recorded_control_mode(env_info: dict, episodes: list) -> str | None:
    mode = (env_info.get("env_kwargs") or {}).get("control_mode")
    return mode or (episodes[0].get("control_mode") if episodes else None)


def mode_sibling(h5_path: Path, control_mode: str) -> Path:
    """Where pi_dec.demos writes the same demos converted to the other control mode."""
    return h5_path.with_name(f"{h5_path.stem}.state.{control_mode}.h5")


def task_name(env_id: str) -> str:
    """'PegInsertionSide-v2' -> 'PegInsertionSide': our -v2 variants read the official -v0 demos of their task."""
    return env_id.rsplit("-v", 1)[0]


def load_demos(demo_path: str | Path, control_mode: str | None = None,
               num_traj: int | None = None, rgbd: tuple | None = None, env_id: str | None = None) -> list[dict]:
    """The first `num_traj` trajectories (by index) as dicts of float32 arrays:
    obs (L+1, obs_dim) and actions (L, act_dim).

    `control_mode`, if given, must equal the mode the file was recorded in; `env_id`, if given, its task. With `rgbd` = (state parts,
    the env's observation space), obs is {state, rgb, depth} of RGB-D frames (pi_dec/rgbd.py).
    """
    h5_path = Path(demo_path)
    if not h5_path.exists():
        raise DemoFileError(f"Demo file {h5_path} not found. {GENERATE_HINT}")
    env_info, episodes = _episodes(h5_path.with_suffix(".json"), h5_path)
    if not episodes:
        raise DemoFileError(f"{h5_path} holds no episodes (its JSON lists none). {GENERATE_HINT}")

    recorded_env = env_info.get("env_id")
    if env_id and recorded_env and task_name(recorded_env) != task_name(env_id):
        raise DemoFileError(f"{h5_path} holds demos of {recorded_env}, not of {env_id}: pass the demos of "
                            f"{env_id} (python -m pi_dec.demos --env-id {env_id} ...).")
    recorded = recorded_control_mode(env_info, episodes)
    if control_mode is not None and recorded != control_mode:
        sibling = mode_sibling(h5_path, control_mode)
        fix = (f"pass --demo-path {sibling} (the same demos in that mode)" if sibling.exists() else
               f"convert the demos with `python -m mani_skill2.trajectory.replay_trajectory --traj-path {h5_path} "
               f"-o state -c {control_mode} --save-traj`")
        raise DemoFileError(
            f"{h5_path} was recorded with control mode {recorded!r}, but {control_mode!r} was asked for. "
            f"Pass --control-mode {recorded}, or {fix}.")

    ids = sorted(int(ep["episode_id"]) for ep in episodes)
    if num_traj is not None:
        if num_traj > len(ids):
            raise DemoFileError(f"{num_traj} trajectories asked for, but {h5_path} has only {len(ids)}.")
        ids = ids[:num_traj]

    try:
        h5 = h5py.File(h5_path, "r")
    except OSError as err:
        raise DemoFileError(f"{h5_path} is not an HDF5 file ({err}). {GENERATE_HINT}") from None
    try:
        with h5:
            return _read_trajectories(h5, h5_path, ids, rgbd)
    except (OSError, RuntimeError, KeyError) as err:  # h5py's errors for damaged files
        raise DemoFileError(f"{h5_path} is damaged ({err}). {GENERATE_HINT}") from None


def _read_nested(group: h5py.Group) -> dict:
    return {k: _read_nested(v) if isinstance(v, h5py.Group) else v[()] for k, v in group.items()}


def _read_trajectories(h5: h5py.File, h5_path: Path, ids: list[int], rgbd: tuple | None = None) -> list[dict]:
    """traj_<i>/{obs, actions} for each listed id, checked."""
    trajs = []
    for i in ids:
        name = f"traj_{i}"
        if name not in h5 or "actions" not in h5[name]:
            raise DemoFileError(f"{h5_path} has no group {name} with 'actions', which its JSON lists: "
                                f"not a ManiSkill2 trajectory file, or the h5/json pair does not match.")
        group = h5[name]
        if rgbd is not None:
            trajs.append(_rgbd_trajectory(group, f"{h5_path}:{name}", rgbd))
            continue
        if "obs" not in group or not isinstance(group["obs"], h5py.Dataset):
            kind = "image/dict observations" if "obs" in group else "no observations (obs_mode 'none')"
            raise DemoFileError(
                f"{h5_path}:{name} has {kind}; the state scripts need state observations (RGB-D files are for "
                f"the *_rgbd.py scripts). Convert with "
                f"`python -m mani_skill2.trajectory.replay_trajectory --traj-path {h5_path} -o state "
                f"-c <control mode> --save-traj`.")
        traj = as_trajectory(group["obs"], group["actions"], f"{h5_path}:{name}")
        obs, actions = traj["obs"], traj["actions"]
        if trajs and (obs.shape[1], actions.shape[1]) != (trajs[0]["obs"].shape[1], trajs[0]["actions"].shape[1]):
            raise DemoFileError(f"{h5_path}:{name}: obs/action dims {obs.shape[1]}/{actions.shape[1]} differ "
                                f"from traj_{ids[0]}'s {trajs[0]['obs'].shape[1]}/{trajs[0]['actions'].shape[1]}.")
        trajs.append(traj)
    return trajs


def _rgbd_trajectory(group: h5py.Group, where: str, rgbd: tuple) -> dict:
    from pi_dec.rgbd import demo_obs

    obs = group.get("obs")
    if not isinstance(obs, h5py.Group) or "image" not in obs:
        raise DemoFileError(f"{where} has no RGB-D observations (obs/image); make the file with `python -m "
                            f"pi_dec.demos.rgbd --traj-path <raw demos .h5> -c <control mode>` (README).")
    parts, key_order = rgbd
    try:
        frames = demo_obs(_read_nested(obs), parts, key_order)
    except KeyError as err:
        raise DemoFileError(f"{where}: its observations lack {err}, which this task's RGB-D observations have: "
                            "recorded on another task?") from None
    actions = np.asarray(group["actions"], dtype=np.float32)
    if actions.ndim != 2 or len(frames["state"]) != len(actions) + 1:
        raise DemoFileError(f"{where}: {len(frames['state'])} observations and actions {actions.shape} do not fit "
                            "(need L+1 observations for L actions).")
    return {"obs": frames, "actions": actions}


def as_trajectory(obs, actions, where: str, fix: str = "") -> dict:
    """One trajectory as float32 arrays, obs (L+1, obs_dim) and actions (L, act_dim), or a DemoFileError."""
    obs, actions = np.asarray(obs, dtype=np.float32), np.asarray(actions, dtype=np.float32)
    if obs.ndim != 2 or actions.ndim != 2 or len(obs) != len(actions) + 1:
        raise DemoFileError(f"{where}: obs {obs.shape} and actions {actions.shape} do not fit "
                            f"(need obs (L+1, obs_dim) and actions (L, act_dim)){fix}.")
    for name, values in (("obs", obs), ("actions", actions)):
        if not np.isfinite(values).all():  # a model trained on it would go NaN without a word
            step = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
            raise DemoFileError(f"{where}: {name} at step {step} holds NaN or inf; regenerate these demos or drop "
                                f"this trajectory{fix}.")
    return {"obs": obs, "actions": actions}


def random_batches(n: int, batch_size: int, device):
    """Endless batches of indices into n training windows: a fresh random permutation per epoch, the
    incomplete last batch dropped (as torch's BatchSampler with drop_last)."""
    if n < batch_size:
        raise DemoFileError(f"--batch-size {batch_size} is larger than the {n} training windows: lower it or add demos.")
    while True:
        perm = torch.randperm(n, device=device)
        for i in range(n // batch_size):
            yield perm[i * batch_size:(i + 1) * batch_size]
