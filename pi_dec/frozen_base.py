"""The one seam between Policy Decorator and the policy it refines.

The online loop (pi_dec/policy_decorator.py) knows its base only as a `FrozenBase`: what the policy was
trained with (so that the envs can be built for it), its horizons and dims (so that the residual actor and
the critics can be sized), and one call per decision. It never asks which policy it wraps.

Our bases (pi_dec/base_policies.py) are FrozenBases. So is yours, with no change to pi-dec: write a
factory that takes a checkpoint path and returns an object with the attributes and methods below, and name
it by import path, `module:attribute` (the syntax of Python's entry points and of Gymnasium's
`register(entry_point=...)`), with the current folder importable:

    python online/pi_dec_bet_maniskill2.py --env-id AdroitHandDoorSparse-v1 \\
        --base-policy examples.mlp_base:load --base-policy-ckpt output/mlp_base.pt

A complete example: examples/mlp_base.py.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Protocol, runtime_checkable

from pi_dec.errors import UsageError


@runtime_checkable
class FrozenBase(Protocol):
    """A frozen policy, as Policy Decorator sees it."""

    obs_mode: str  # "state" (observation vectors) or "rgbd" (pi_dec/rgbd.py windows): what the envs give it
    control_mode: str | None  # the controller its actions are for (None: the task's default)
    image_size: tuple[int, int] | None  # camera (height, width), for obs_mode "rgbd"
    obs_horizon: int  # observations per window it reads
    act_horizon: int  # actions it returns per decision (all executed before it is asked again)
    obs_dim: int  # the size of the env's observation vector (for "rgbd": of its state vector)
    act_dim: int  # the size of one action
    res_obs_dim: int  # the size of what the residual policy sees (`act`'s second result)
    config: dict  # JSON-serializable; recorded in the online run's args.json as "base_policy"

    def act(self, obs_seq: Any) -> tuple[Any, Any]:
        """(N, obs_horizon, obs_dim) tensor (or a dict of such for "rgbd") -> (chunk (N, act_horizon, act_dim),
        what the residual policy sees (N, res_obs_dim)), torch tensors on the base's device. No gradients."""

    def reset(self, done: Any) -> None:
        """Envs whose episode just ended (a bool array of N): forget their per-episode state, if any."""

    def to(self, device: Any) -> FrozenBase:
        """Move to a torch device; returns the base."""


SPEC = {"obs_mode": str, "obs_horizon": int, "act_horizon": int, "obs_dim": int, "act_dim": int,
        "res_obs_dim": int, "config": dict}  # what check_base reads, and their types


def check_base(base: Any, source: str) -> FrozenBase:
    """`base` if it is a FrozenBase, else a one-line UsageError naming what it lacks."""
    missing = [name for name in ("act", "reset", "to", "control_mode", "image_size", *SPEC) if not hasattr(base, name)]
    if missing:
        raise UsageError(f"{source} returned a {type(base).__name__}, which lacks {', '.join(missing)}: a base policy "
                         "must have the attributes and methods of pi_dec.frozen_base.FrozenBase.")
    for name, kind in SPEC.items():
        value = getattr(base, name)
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 1):
            raise UsageError(f"{source}: its {name} is {value!r}; it must be a{' positive' if kind is int else ''} "
                             f"{kind.__name__} (pi_dec.frozen_base.FrozenBase).")
    if base.obs_mode not in ("state", "rgbd"):
        raise UsageError(f"{source}: its obs_mode is {base.obs_mode!r}; it must be 'state' or 'rgbd'.")
    if base.obs_mode == "rgbd" and (base.image_size is None or len(base.image_size) != 2):
        raise UsageError(f"{source}: obs_mode 'rgbd' needs image_size (height, width); it has {base.image_size!r}.")
    return base


def import_factory(path: str):
    """The callable named by `module:attribute` (attributes may be dotted), importable from the current folder."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--base-policy {path}: name a factory as module:attribute, e.g. examples.mlp_base:load.")
    if os.getcwd() not in sys.path:  # as `python -m` does: the user's own modules beside them
        sys.path.insert(0, os.getcwd())
    try:
        target = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(f"--base-policy {path}: cannot import {module_name} ({err}); run from the folder that holds "
                         "it, or install its package.") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UsageError(f"--base-policy {path}: {module_name} has no {attr}.")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"--base-policy {path}: {attr} is not callable (a factory: checkpoint path -> base policy).")
    return target
