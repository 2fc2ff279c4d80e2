"""RGB-D observations for the visual Diffusion Policy and its Policy Decorator (ManiSkill2 tasks).

ManiSkill2's `obs_mode="rgbd"` gives a nested dict: `agent`, `extra`, `camera_param` and per camera
`image/<camera>/{rgb, depth}` as (H, W, C). The visual scripts see three arrays instead:

    state  float32 (D,)          the task's state parts (STATE_PARTS), flattened in the env's key order
    rgb    uint8   (3k, H, W)    the k cameras' colour images, stacked on channels
    depth  float32 (k, H, W)     their depth in metres

Demonstration files store depth as uint16 (ManiSkill2's recorder multiplies metres by 2**10); the
offline script divides by 1024 (as the upstream does). The camera size comes from the demo json's
`env_info.env_kwargs.camera_cfgs`; the envs are made with the same `camera_cfgs`.

This module is imported by env worker processes: it must not import torch.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from pi_dec.errors import UsageError

# Which top-level parts of a ManiSkill2 observation make the state vector, by task family.
# The upstream knows TurnFaucet, StackCube (only `extra`) and PushChair (`agent` and `extra`); the cube and
# peg tasks are our extension and follow StackCube.
STATE_PARTS = {"TurnFaucet": ("extra",), "StackCube": ("extra",), "PushChair": ("agent", "extra"),
               "PickCube": ("extra",), "LiftCube": ("extra",), "PegInsertionSide": ("extra",)}
DEPTH_SCALE = 1024.0  # ManiSkill2 stores depth * 2**10 as uint16 in trajectory files


def state_parts(env_id: str) -> tuple[str, ...]:
    family = env_id.split("-")[0]
    if family not in STATE_PARTS:
        raise UsageError(f"{env_id}: RGB-D observations are defined for {', '.join(STATE_PARTS)} "
                         "(the state vector each task adds to the images); use the state-observation scripts.")
    return STATE_PARTS[family]


def camera_kwargs(image_size) -> dict:
    """Env kwargs for cameras of `image_size` = (height, width)."""
    # NOTE(fix): the upstream passes width=image_size[0], height=image_size[1] with image_size = (height,
    # width), which turns non-square cameras (PushChair's 50x125) on their side; we keep them upright.
    height, width = image_size
    return {"camera_cfgs": {"width": int(width), "height": int(height)}}


def convert_obs(obs: dict, parts: tuple[str, ...], key_order: dict | None = None, lead: int = 0) -> dict:
    """A ManiSkill2 rgbd observation (`lead` leading axes, e.g. 1 for a trajectory) -> {state, rgb, depth},
    images channels-first. `key_order` (an observation space) orders the keys of the state parts and
    cameras; demo files list them alphabetically, the envs in their own order."""
    def ordered(d: dict, ref) -> list:
        return [d[k] for k in (ref.keys() if ref is not None else d.keys())]

    state = []
    for part in parts:
        ref = key_order[part] if key_order is not None else None
        state += [np.asarray(v, np.float32).reshape(*np.shape(v)[:lead], -1) for v in ordered(obs[part], ref)]
    cams = ordered(obs["image"], key_order["image"] if key_order is not None else None)
    axes = (*range(lead), lead + 2, lead, lead + 1)  # (..., H, W, C) -> (..., C, H, W)
    return {"state": np.concatenate(state, axis=-1),
            "rgb": np.concatenate([c["rgb"] for c in cams], axis=-1).transpose(axes),
            "depth": np.concatenate([c["depth"] for c in cams], axis=-1).transpose(axes)}


class RGBDObsWrapper(gym.ObservationWrapper):
    """ManiSkill2 rgbd observations -> {state, rgb, depth} (see the module's docstring)."""

    def __init__(self, env: gym.Env, env_id: str):
        super().__init__(env)
        self.parts = state_parts(env_id)
        space = env.observation_space
        state_dim = sum(int(np.prod(s.shape)) for p in self.parts for s in space[p].values())
        h, w, _ = next(iter(space["image"].values()))["rgb"].shape
        k = len(space["image"])
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            "rgb": spaces.Box(0, 255, (3 * k, h, w), np.uint8),
            "depth": spaces.Box(-np.inf, np.inf, (k, h, w), np.float32)})

    def observation(self, obs):
        return convert_obs(obs, self.parts, self.env.observation_space)


class DictFrameStack(gym.ObservationWrapper):
    """The last `num_stack` observations of a Dict space, stacked per key on a new first axis (the first
    observation of an episode repeated, as gymnasium's FrameStack does for arrays)."""

    def __init__(self, env: gym.Env, num_stack: int):
        super().__init__(env)
        self.frames = deque(maxlen=num_stack)
        self.observation_space = spaces.Dict({
            k: spaces.Box(np.repeat(s.low[None], num_stack, 0), np.repeat(s.high[None], num_stack, 0), dtype=s.dtype)
            for k, s in env.observation_space.items()})

    def observation(self, obs):
        return {k: np.stack([f[k] for f in self.frames]) for k in self.observation_space.keys()}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.frames.extend([obs] * self.frames.maxlen)
        return self.observation(None), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(obs)
        return self.observation(None), reward, terminated, truncated, info


def demo_obs(obs_group: dict, parts: tuple[str, ...], key_order) -> dict:
    """One trajectory's observations from a demo file (nested dict of (L+1, ...) arrays) -> {state float32,
    rgb uint8, depth float16 in metres}: the envs' values, depth in half precision as the upstream keeps it."""
    out = convert_obs(obs_group, parts, key_order, lead=1)
    out["depth"] = (out["depth"].astype(np.float32) / DEPTH_SCALE).astype(np.float16)
    return out
