"""Policy Decorator around a frozen RGB-D Diffusion Policy (the upstream's visual-observation variant).

    python online/pi_dec_diffusion_maniskill2_rgbd.py --env-id TurnFaucet-v2 \
        --base-policy-ckpt checkpoints/diffusion_rgbd_TurnFaucet/checkpoints/best.pt \
        --res-scale 0.05 --prog-explore 30_000

As online/pi_dec_diffusion_maniskill2.py (same flags; defaults as the upstream's RGB-D script), except for
what the residual policy sees: not pixels, but the frozen base's embedding of the latest frame (its conv
features of rgb + depth, and the state vector). The replay buffer stores those embeddings, so the SAC
update costs what it does on state observations. The envs render the cameras at the base's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import SAMPLING_RULES, DiffusionPolicyRGBD, DiffusionSampling
from pi_dec.policy_decorator import ONLINE_RULES, OnlineArgs, load_frozen_base, train, validate
from pi_dec.run import user_errors

ALGO_NAME = "PolicyDecorator-DiffusionPolicy-rgbd"


@dataclass
class Args(DiffusionSampling, OnlineArgs):  # the sampler flags: --ddim-steps, --ddpm-steps, --act-horizon
    env_id: str = "TurnFaucet-v2"
    """the task"""
    base_policy_ckpt: str = "checkpoints/diffusion_rgbd_TurnFaucet/checkpoints/best.pt"
    """RGB-D Diffusion Policy checkpoint (<run>/checkpoints/<tag>.pt, with <run>/args.json)"""
    total_timesteps: int = 2_000_000
    """decisions x envs to collect"""
    batch_size: int = 256
    """SAC batch size"""
    res_scale: float = 0.05
    """how far the residual may move the base action (alpha in the paper; tune per task)"""
    prog_explore: int = 30_000
    """steps until the residual is used in every env (H in the paper; tune per task)"""


RULES = ONLINE_RULES | SAMPLING_RULES  # what each numeric flag allows


def main(args: Args):
    validate(args, RULES)
    # The frozen base: RGB-D window -> (chunk (N, act_horizon, act_dim), latest frame's embedding (N, D))
    base = load_frozen_base(args, expect=DiffusionPolicyRGBD)
    return train(args, base, ALGO_NAME, __file__)


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
