"""The Policy Decorator task variants, registered with ManiSkill2 on import.

- PegInsertionSide-v2: the success check also bounds how far the peg head went into the hole.
- TurnFaucet-v2: one more state observation (the handle's current position); held-out faucets.
- PushChair-v2: held-out chairs; a static check that works with the chair's own pose history.

Default arguments behave exactly like the original repository's `envs/maniskill_fixed.py`. Unlike it,
`model_ids`, `asset_root` and `model_json` may be overridden (the defaults stay the held-out sets).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections import OrderedDict
from pathlib import Path


def _import_maniskill2_envs_without_mpm() -> None:
    """Import mani_skill2.envs (which registers ManiSkill2's tasks) without its soft-body (MPM) tasks.

    Their simulator (warp) imports torch, which would cost every env worker ~200 MB for tasks this
    project never uses. A placeholder package for mani_skill2.envs.mpm keeps them out; its submodules
    still import on demand (RecordEpisode checks for MPMBaseEnv). Set PI_DEC_LOAD_MPM=1 to load them.
    """
    import os

    if "mani_skill2.envs" in sys.modules or os.environ.get("PI_DEC_LOAD_MPM") == "1":
        import mani_skill2.envs  # noqa: F401
        return
    mpm_dir = Path(importlib.util.find_spec("mani_skill2").submodule_search_locations[0]) / "envs" / "mpm"
    placeholder = types.ModuleType("mani_skill2.envs.mpm")
    placeholder.__path__ = [str(mpm_dir)]
    sys.modules["mani_skill2.envs.mpm"] = placeholder
    import mani_skill2.envs  # noqa: F401


_import_maniskill2_envs_without_mpm()

import numpy as np  # noqa: E402
import sapien.core as sapien  # noqa: E402
from mani_skill2 import format_path  # noqa: E402
from mani_skill2.envs.assembly.peg_insertion_side import PegInsertionSideEnv
from mani_skill2.envs.misc.turn_faucet import TurnFaucetEnv
from mani_skill2.envs.ms1.push_chair import PushChairEnv
from mani_skill2.utils.geometry import angle_distance
from mani_skill2.utils.registration import REGISTERED_ENVS, register_env
from mani_skill2.utils.sapien_utils import vectorize_pose

from pi_dec.errors import MissingAssetError  # noqa: F401  (re-exported)

# The base policies were trained on the other models; online interaction uses these held-out ones.
FAUCET_TRAIN_IDS = ("5002", "5021", "5023", "5028", "5029", "5045", "5047", "5051", "5056", "5063")
FAUCET_ONLINE_IDS = ("5014", "5037", "5053", "5062")
CHAIR_TRAIN_IDS = ("3022", "3027", "3030", "3070", "3076")
CHAIR_ONLINE_IDS = ("3003", "3013", "3020")
DEFAULT_ASSET_ROOT = "{ASSET_DIR}/partnet_mobility/dataset"


class PartNetMobilityModels:
    """Mixin for envs that load PartNet-Mobility models: held-out defaults and a clear missing-asset error."""

    ASSET_UID: str
    ONLINE_IDS: tuple
    URDF_NAMES: tuple

    @classmethod
    def resolve_model_ids(cls, model_ids=()) -> list:
        model_ids = [model_ids] if isinstance(model_ids, str) else [str(m) for m in model_ids]
        return model_ids or list(cls.ONLINE_IDS)

    @classmethod
    def check_assets(cls, model_ids=(), asset_root: str = DEFAULT_ASSET_ROOT, model_json: str | None = None,
                     **_) -> None:
        """Stop with one line naming the missing models and how to fetch them, or what is wrong with the
        model json (when one is given: the default one ships with ManiSkill2)."""
        if model_json is not None:
            cls.check_model_json(Path(format_path(model_json)), cls.resolve_model_ids(model_ids))
        root = Path(format_path(asset_root))
        missing = [m for m in cls.resolve_model_ids(model_ids)
                   if not any((root / m / name).exists() for name in cls.URDF_NAMES)]
        if missing:
            raise MissingAssetError(
                f"PartNet-Mobility models {', '.join(missing)} not found under {root} "
                f"(looked for {' or '.join(cls.URDF_NAMES)}). On a machine with internet run "
                f"`python -m mani_skill2.utils.download_asset {cls.ASSET_UID}` and set MS2_ASSET_DIR to the "
                f"folder that holds partnet_mobility/ (now: {format_path('{ASSET_DIR}')})."
            )

    @staticmethod
    def check_model_json(path: Path, model_ids: list) -> None:
        try:
            models = json.loads(path.read_text())
        except FileNotFoundError:
            raise MissingAssetError(f"--model-json {path}: not found.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MissingAssetError(f"--model-json {path}: not readable as JSON ({err}).") from None
        if not isinstance(models, dict):
            raise MissingAssetError(f"--model-json {path}: not a PartNet-Mobility model json (an object keyed by "
                                    "model id).")
        if unknown := [m for m in model_ids if m not in models]:
            raise MissingAssetError(f"--model-json {path} does not list the models {', '.join(unknown)}: pass the "
                                    "json of these models (or other --obj-ids).")


def preflight(env_id: str, env_kwargs: dict | None = None) -> None:
    """Check in the main process what would otherwise fail inside an env worker (missing assets)."""
    spec = REGISTERED_ENVS.get(env_id)
    if spec is not None and issubclass(spec.cls, PartNetMobilityModels):
        spec.cls.check_assets(**(env_kwargs or {}))


@register_env("PegInsertionSide-v2", max_episode_steps=200)
class PegInsertionSideV2(PegInsertionSideEnv):
    """PegInsertionSide whose success needs the peg head inside the hole, not pushed past or beside it."""

    MAX_HEAD_DEPTH = 0.075  # ManiSkill2 0.5.3 only checks the lower bound (-0.015)

    def has_peg_inserted(self):
        peg_head_pose = self.peg.pose.transform(self.peg_head_offset)
        peg_head_pos_at_hole = (self.box_hole_pose.inv() * peg_head_pose).p
        x, y, z = peg_head_pos_at_hole  # x is the hole's direction
        r = self.box_hole_radius
        inserted = (-0.015 <= x <= self.MAX_HEAD_DEPTH) and (-r <= y <= r) and (-r <= z <= r)
        return inserted, peg_head_pos_at_hole


@register_env("TurnFaucet-v2", max_episode_steps=200)
class TurnFaucetV2(PartNetMobilityModels, TurnFaucetEnv):
    """TurnFaucet with the handle's current position in the observation (as in CoTPC's patch)."""

    ASSET_UID = "partnet_mobility_faucet"
    ONLINE_IDS = FAUCET_ONLINE_IDS
    URDF_NAMES = ("mobility_cvx.urdf",)

    def __init__(self, *args, model_ids=(), asset_root: str = DEFAULT_ASSET_ROOT, **kwargs):
        model_ids = self.resolve_model_ids(model_ids)
        self.check_assets(model_ids, asset_root, kwargs.get("model_json"))
        super().__init__(*args, model_ids=model_ids, asset_root=asset_root, **kwargs)

    def _get_curr_target_link_pos(self):
        """World position of the handle link's centre of mass."""
        return (self.target_link.pose * self.target_link.cmass_local_pose).p

    def _get_obs_extra(self) -> OrderedDict:
        obs = OrderedDict(
            tcp_pose=vectorize_pose(self.tcp.pose),
            target_angle_diff=np.array(self.target_angle_diff),
            target_joint_axis=self.target_joint_axis,
            target_link_pos=self.target_link_pos,
            curr_target_link_pos=self._get_curr_target_link_pos(),
        )
        if self._obs_mode in ["state", "state_dict"]:
            obs["angle_dist"] = np.array(self.target_angle - self.current_angle)
        return obs


@register_env("PushChair-v2", max_episode_steps=200)
class PushChairV2(PartNetMobilityModels, PushChairEnv):
    """PushChair on held-out chairs, with a static check that survives repeated calls per step.

    ManiSkill2 0.5.3 keeps one previous pose for all actors and never clears it on reset, so a
    second call in the same step (or a new episode) compares against the wrong pose.
    """

    ASSET_UID = "partnet_mobility_chair"
    ONLINE_IDS = CHAIR_ONLINE_IDS
    URDF_NAMES = ("mobility_cvx.urdf", "mobility_fixed.urdf")

    def __init__(self, *args, model_ids=(), asset_root: str = DEFAULT_ASSET_ROOT, **kwargs):
        model_ids = self.resolve_model_ids(model_ids)
        self.check_assets(model_ids, asset_root, kwargs.get("model_json"))
        self._prev_actor_pose_dict = {}
        super().__init__(*args, model_ids=model_ids, asset_root=asset_root, **kwargs)

    def reset(self, seed=None, options=None):
        self._prev_actor_pose_dict = {}
        return super().reset(seed, options)

    def check_actor_static(self, actor: sapien.Actor, max_v=None, max_ang_v=None):
        """Static if the pose moved at most max_v*dt (linear) and max_ang_v*dt (angular) since the last
        control step; at the first step, use the instantaneous velocities instead."""
        pose = actor.get_pose()
        if self._elapsed_steps <= 1:
            flag_v = max_v is None or np.linalg.norm(actor.get_velocity()) <= max_v
            flag_ang_v = max_ang_v is None or np.linalg.norm(actor.get_angular_velocity()) <= max_ang_v
        else:
            prev_pose, prev_step, prev_static = self._prev_actor_pose_dict[actor.id]
            if prev_step == self._elapsed_steps:  # asked twice in one step: same answer
                return prev_static
            assert prev_step == self._elapsed_steps - 1, (prev_step, self._elapsed_steps)
            dt = 1.0 / self._control_freq
            flag_v = max_v is None or np.linalg.norm(pose.p - prev_pose.p) <= max_v * dt
            flag_ang_v = max_ang_v is None or angle_distance(prev_pose, pose) <= max_ang_v * dt
        static = bool(flag_v and flag_ang_v)
        self._prev_actor_pose_dict[actor.id] = (pose, self._elapsed_steps, static)
        return static
