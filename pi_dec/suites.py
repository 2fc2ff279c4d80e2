"""Task suites: the one place that knows how ManiSkill2 and Adroit tasks differ.

A suite builds one raw env of its tasks (sparse success reward, `info["success"]`), checks the flags
and files a task needs, and reads its demonstration files. The scripts ask `suite_for(env_id)` and do
not branch on the family themselves.

| | ManiSkill2 (SAPIEN) | Adroit (MuJoCo, gymnasium-robotics) |
|---|---|---|
| tasks | ManiSkill2's and our `-v2` variants | AdroitHand{Door,Hammer,Pen,Relocate}Sparse-v1 |
| control modes | ManiSkill2's; default pd_ee_delta_pose | one: pd_joint_pos (absolute joint targets) |
| episode | ends at success, or after 200 steps | the same (our choice, see SuccessEndsEpisode) |
| demos | ManiSkill2 trajectory .h5 + .json | the same format (`pi_dec.demos`), or a Minari dataset |

This module is imported by env worker processes: it must not import torch.
"""

from __future__ import annotations

import difflib

import gymnasium as gym

from pi_dec.errors import UnknownEnvError, UsageError  # noqa: F401  (re-exported)

ADROIT_TASKS = ("AdroitHandDoorSparse-v1", "AdroitHandHammerSparse-v1", "AdroitHandPenSparse-v1",
                "AdroitHandRelocateSparse-v1")
MAX_EPISODE_STEPS = 200  # every Policy Decorator task, ManiSkill2 and Adroit


# DAPG's `evaluate_success` (hand_dapg's mj_envs): an episode succeeds if its goal is achieved in more than this
# many of its steps (its episodes run to the time limit: Pen 100 steps there, 200 here).
DAPG_GOAL_STEPS = {"AdroitHandDoorSparse-v1": 25, "AdroitHandHammerSparse-v1": 25, "AdroitHandPenSparse-v1": 20,
                   "AdroitHandRelocateSparse-v1": 25}


class SuccessEndsEpisode(gym.Wrapper):
    """Adroit in our ManiSkill2 setting: reward = success (0 or 1), and the episode ends at its first success.

    gymnasium-robotics' sparse reward is 10 at success and -0.1 otherwise, and its episodes never end
    early. The paper does not state its Adroit reward; we use the one its ManiSkill2 tasks have, so the
    online scripts' `reward - 1` gives the same -1 per step until success everywhere.
    `end_at_success=False` lets episodes run on, for DAPG's stricter rate; `info["success_steps"]` counts
    the episode's steps with success so far.
    """

    def __init__(self, env: gym.Env, end_at_success: bool = True):
        super().__init__(env)
        self.end_at_success, self.success_steps = end_at_success, 0

    def reset(self, **kwargs):
        self.success_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        success = bool(info["success"])
        self.success_steps += success
        info["success_steps"] = self.success_steps
        return obs, float(success), terminated or (success and self.end_at_success), truncated, info


class ManiSkill2Suite:
    name = "ManiSkill2"
    default_control_mode = "pd_ee_delta_pose"

    @staticmethod
    def register() -> None:
        import pi_dec.envs  # noqa: F401  (registers ManiSkill2's envs and the -v2 variants)

    @staticmethod
    def control_mode(requested: str | None) -> str:
        return requested or ManiSkill2Suite.default_control_mode

    @staticmethod
    def env_kwargs(obj_ids=(), asset_root: str | None = None, model_json: str | None = None) -> dict:
        """Env kwargs that pick PartNet-Mobility models (TurnFaucet/PushChair); empty means the defaults."""
        kwargs = {}
        if len(obj_ids) > 0:
            kwargs["model_ids"] = list(obj_ids)
        if asset_root:
            kwargs["asset_root"] = asset_root
        if model_json:
            kwargs["model_json"] = model_json
        return kwargs

    @staticmethod
    def preflight(env_id: str, env_kwargs: dict) -> None:
        from pi_dec.envs import preflight

        preflight(env_id, env_kwargs)

    @staticmethod
    def make(env_id: str, control_mode: str | None, obs_mode: str, video_dir: str | None, env_kwargs: dict,
             max_episode_steps: int | None, end_at_success: bool = True) -> gym.Env:
        from mani_skill2.utils.wrappers import RecordEpisode

        if not end_at_success:
            raise UsageError(f"{env_id}: ManiSkill2 episodes end at success; running past it (DAPG's success "
                             "rule) is for Adroit tasks.")

        if max_episode_steps is not None:
            env_kwargs = {**env_kwargs, "max_episode_steps": max_episode_steps}
        env = gym.make(env_id, reward_mode="sparse", obs_mode=obs_mode, control_mode=control_mode,
                       render_mode="cameras" if video_dir else None, **env_kwargs)
        if video_dir:
            env = RecordEpisode(env, output_dir=video_dir, save_trajectory=False, info_on_video=True)
        return env

    @staticmethod
    def load_demos(path, env_id: str, control_mode: str | None, num_traj: int | None) -> list[dict]:
        from pi_dec.demo_data import load_demos

        return load_demos(path, control_mode=control_mode, num_traj=num_traj, env_id=env_id)


class AdroitSuite:
    name = "Adroit"
    default_control_mode = "pd_joint_pos"  # Adroit's actuators are position servos on every joint

    @staticmethod
    def register() -> None:
        import gymnasium_robotics  # noqa: F401  (registers the Adroit envs; its import-time notice: pi_dec/__init__.py)

    @staticmethod
    def control_mode(requested: str | None) -> str:
        if requested not in (None, AdroitSuite.default_control_mode):
            raise UsageError(f"--control-mode {requested}: Adroit tasks have one control mode, pd_joint_pos "
                             "(absolute joint targets); leave --control-mode out.")
        return AdroitSuite.default_control_mode

    @staticmethod
    def env_kwargs(obj_ids=(), asset_root: str | None = None, model_json: str | None = None) -> dict:
        given = [flag for flag, value in (("--obj-ids", obj_ids), ("--asset-root", asset_root),
                                          ("--model-json", model_json)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} pick PartNet-Mobility models of ManiSkill2 tasks; Adroit tasks "
                             "have none: leave them out.")
        return {}

    @staticmethod
    def preflight(env_id: str, env_kwargs: dict) -> None:
        pass

    @staticmethod
    def make(env_id: str, control_mode: str | None, obs_mode: str, video_dir: str | None, env_kwargs: dict,
             max_episode_steps: int | None, end_at_success: bool = True) -> gym.Env:
        AdroitSuite.register()
        if obs_mode != "state" or video_dir:
            raise UsageError(f"{env_id}: Adroit tasks run with state observations and no video here "
                             "(leave --capture-video out).")
        env = gym.make(env_id, max_episode_steps=max_episode_steps or MAX_EPISODE_STEPS, **env_kwargs)
        return SuccessEndsEpisode(env, end_at_success)

    @staticmethod
    def load_demos(path, env_id: str, control_mode: str | None, num_traj: int | None) -> list[dict]:
        from pi_dec.demo_data import load_demos
        from pi_dec.minari_data import is_minari_file, load_minari_demos

        if is_minari_file(path):
            return load_minari_demos(path, env_id, num_traj)
        return load_demos(path, control_mode=control_mode, num_traj=num_traj, env_id=env_id)


def suite_for(env_id: str):
    """The suite of a task; fails with one line (and close matches) on an id no suite knows."""
    if env_id.startswith("AdroitHand"):
        if env_id in ADROIT_TASKS:
            return AdroitSuite
        close = difflib.get_close_matches(env_id, ADROIT_TASKS, n=2, cutoff=0.5)
        raise UnknownEnvError(f"Unknown Adroit task {env_id!r}; the Policy Decorator ones are "
                              f"{', '.join(close or ADROIT_TASKS)} (sparse success, 200 steps).")
    ManiSkill2Suite.register()
    if env_id not in gym.registry:
        known = [k for k in gym.registry if "-v" in k] + list(ADROIT_TASKS)
        close = difflib.get_close_matches(env_id, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownEnvError(f"Unknown env id {env_id!r}.{hint} The Policy Decorator tasks are StackCube-v0, "
                              "PegInsertionSide-v2, TurnFaucet-v2, PushChair-v2 and AdroitHand{Door,Hammer,Pen,"
                              "Relocate}Sparse-v1.")
    return ManiSkill2Suite
