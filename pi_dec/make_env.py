"""Build the (vectorized) envs every script uses, for any suite (ManiSkill2, Adroit: pi_dec/suites.py).

One env = the suite's task (sparse reward, state or RGB-D obs, a control mode)
        -> [RecordEpisode video] -> [RGB-D obs as {state, rgb, depth}: pi_dec/rgbd.py] -> episode statistics
        -> action clipping -> frame stack to `obs_horizon` -> action-chunk execution.

This module is what env worker processes import (AsyncVectorEnv pickles the thunk by reference),
so it must not import torch or anything heavy beyond gymnasium and the simulators.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from typing import Callable, Sequence

import gymnasium as gym
import numpy as np

import pi_dec  # noqa: F401  (sets up Vulkan before sapien is imported)
from pi_dec.rgbd import DictFrameStack, RGBDObsWrapper
from pi_dec.suites import ManiSkill2Suite, UnknownEnvError, suite_for  # noqa: F401  (UnknownEnvError: re-export)


class ActionChunkWrapper(gym.Wrapper):
    """Execute a sequence of actions, (act_horizon, act_dim), as one step.

    Rewards are summed; execution stops early at termination or truncation, and the obs/info returned
    are those of the last executed step.
    """

    def step(self, action_seq):
        reward_sum = 0.0
        for action in action_seq:
            obs, reward, terminated, truncated, info = self.env.step(action)
            reward_sum += reward
            if terminated or truncated:
                break
        return obs, reward_sum, terminated, truncated, info


class SeedSchedule(gym.Wrapper):
    """Start each episode from the next seed of a fixed list, the automatic resets of a vector env too;
    once the list is used up, episodes start unseeded."""

    def __init__(self, env: gym.Env, seeds: Sequence[int]):
        super().__init__(env)
        self.seeds = list(seeds)

    def reset(self, *, seed=None, options=None):
        if seed is None and self.seeds:
            seed = self.seeds.pop(0)
        return self.env.reset(seed=seed, options=options)


def asset_kwargs(obj_ids: Sequence[str] = (), asset_root: str | None = None, model_json: str | None = None,
                 env_id: str | None = None) -> dict:
    """Env kwargs that pick PartNet-Mobility models (TurnFaucet/PushChair); empty means the defaults.
    With `env_id`, its suite checks them (Adroit tasks take none)."""
    suite = suite_for(env_id) if env_id else ManiSkill2Suite
    return suite.env_kwargs(obj_ids, asset_root, model_json)


def make_env(env_id: str, seed: int, control_mode: str | None = None, obs_horizon: int = 1,
             video_dir: str | None = None, env_kwargs: dict | None = None, obs_mode: str = "state",
             act_chunks: bool = True, max_episode_steps: int | None = None, reset_seeds: Sequence[int] = (),
             end_at_success: bool = True) -> Callable[[], gym.Env]:
    """A thunk that builds one wrapped env (for gym.vector.*VectorEnv).

    `act_chunks=True` makes the env take (act_horizon, act_dim) action sequences; `max_episode_steps`
    overrides the task's time limit (200 for every Policy Decorator task); `reset_seeds` seeds its
    unseeded resets in turn (see SeedSchedule); `end_at_success=False` runs Adroit episodes past success.
    """
    env_kwargs = dict(env_kwargs or {})

    def thunk() -> gym.Env:
        env = suite_for(env_id).make(env_id, control_mode, obs_mode, video_dir, env_kwargs, max_episode_steps,
                                     end_at_success)
        if obs_mode == "rgbd":
            env = RGBDObsWrapper(env, env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = DictFrameStack(env, obs_horizon) if obs_mode == "rgbd" else gym.wrappers.FrameStack(env, obs_horizon)
        if act_chunks:
            env = ActionChunkWrapper(env)
        if reset_seeds:
            env = SeedSchedule(env, reset_seeds)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
        return env

    return thunk


def check_env(env_id: str, env_kwargs: dict | None = None) -> None:
    """Fail early, in the main process, on an unknown env id or missing assets."""
    suite_for(env_id).preflight(env_id, env_kwargs or {})


def make_vec_env(env_id: str, num_envs: int, seed: int, control_mode: str | None = None,
                 obs_horizon: int = 1, video_dir: str | None = None, env_kwargs: dict | None = None,
                 asynchronous: bool = True, reset_seeds: Sequence[Sequence[int]] | None = None,
                 **kwargs) -> gym.vector.VectorEnv:
    """`num_envs` envs seeded seed, seed+1, ...; the video (if any) is recorded by env 0 only.
    `reset_seeds[i]`, if given, lists the seeds env i starts its episodes from, in order.

    Async envs run in `forkserver` worker processes (fork is unsafe with torch threads and Vulkan). Adroit
    too: on 2 cores 16 Door envs stepped 2,660 steps/s in workers against 1,950 in one process.
    """
    check_env(env_id, env_kwargs)  # fail here, not in a worker
    thunks = [make_env(env_id, seed + i, control_mode, obs_horizon, video_dir if i == 0 else None,
                       env_kwargs, reset_seeds=reset_seeds[i] if reset_seeds else (), **kwargs)
              for i in range(num_envs)]
    if asynchronous and num_envs > 1:
        # Workers import pi_dec before gymnasium (whose unpickled worker function comes first otherwise), so
        # gymnasium-robotics' import-time notice is filtered there too (pi_dec/__init__.py).
        multiprocessing.get_context("forkserver").set_forkserver_preload(["pi_dec"])
        with _workers_skip_main_module():
            return gym.vector.AsyncVectorEnv(thunks, context="forkserver")
    return gym.vector.SyncVectorEnv(thunks)


@contextlib.contextmanager
def _workers_skip_main_module():
    """Start env workers without re-running the calling script in each of them.

    Python's forkserver/spawn start methods import the main module in every worker (so its functions
    can be unpickled). Our thunks live in this module, so workers do not need it, and re-importing a
    training script costs each worker torch, diffusers, ... (the original's 16 workers reached 11.7 GB).
    Hiding the main module's file and spec while the workers start makes Python skip that import.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        for key in saved:
            if key == "__spec__":
                main.__spec__ = None
            else:
                del main.__dict__[key]
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def finished_episodes(infos: dict) -> list[dict]:
    """The `final_info` dicts of the envs whose episode ended in this vector step."""
    if "final_info" not in infos:
        return []
    return [infos["final_info"][i] for i in np.where(infos["_final_info"])[0]]
