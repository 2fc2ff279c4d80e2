"""Train a Diffusion Policy (1-D conditional U-Net, DDPM) on ManiSkill2 demonstrations.

    python offline/diffusion_policy_unet_maniskill2.py --env-id PegInsertionSide-v2 \
        --demo-path data/PegInsertionSide/trajectory.h5

The policy sees the last `obs_horizon` observations, denoises a sequence of `pred_horizon` actions
and executes `act_horizon` of them. Writes output/<env_id>/Offline-DiffusionPolicy-UNet/<run>/ with
args.json, tensorboard logs and checkpoints/{best,<iter>}.pt ({'agent', 'ema_agent'} state dicts).

The windows of the demonstrations (WindowDataset) and the denoising loop with EMA weights (`fit`) are in
pi_dec/diffusion_training.py, shared with the RGB-D script; this script loads state demos and builds the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import DP_ALGO, DiffusionPolicy
from pi_dec.diffusion_training import RULES, DiffusionTrainArgs, WindowDataset, check_args, fit  # noqa: F401
from pi_dec.diffusion_training import pad_action_for  # noqa: F401  (re-exported for readers of this script)
from pi_dec.make_env import check_env
from pi_dec.run import Run, offline_eval_envs, setup_torch, user_errors
from pi_dec.suites import suite_for


@dataclass
class Args(DiffusionTrainArgs):
    env_id: str = "PegInsertionSide-v2"
    """the task"""
    demo_path: str = "data/PegInsertionSide/trajectory.h5"
    """demonstrations (ManiSkill2 trajectory .h5 with its .json; for Adroit also a Minari dataset folder)"""


def main(args: Args) -> Run:
    check_args(args)
    suite = suite_for(args.env_id)  # ManiSkill2 or Adroit: env construction, control modes, demo files
    args.control_mode = suite.control_mode(args.control_mode)
    env_kwargs = suite.env_kwargs(args.obj_ids, args.asset_root, args.model_json)
    check_env(args.env_id, env_kwargs)
    device = setup_torch(args.seed, args.cuda, args.num_threads, args.torch_deterministic)
    trajs = suite.load_demos(args.demo_path, args.env_id, args.control_mode, args.num_demo_traj)
    data = WindowDataset(trajs, args.obs_horizon, args.pred_horizon, args.control_mode, device)
    obs_dim, act_dim = data.obs.shape[1], data.act.shape[1]
    print(f"{len(trajs)} demos, {data.num_transitions} transitions, {len(data)} windows")

    run = Run(args, DP_ALGO, __file__)

    def policy() -> DiffusionPolicy:
        return DiffusionPolicy(obs_dim, act_dim, args.obs_horizon, args.act_horizon, args.pred_horizon,
                               args.diffusion_step_embed_dim, args.unet_dims, args.n_groups).to(device)

    agent, ema_agent = policy(), policy()
    eval_envs = offline_eval_envs(args, args.obs_horizon, obs_dim, act_dim, run, env_kwargs)
    # ALGO LOGIC: the denoising loss on random windows, EMA weights evaluated and saved (pi_dec/diffusion_training.py)
    return fit(args, agent, ema_agent, data, run, eval_envs, device)


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
