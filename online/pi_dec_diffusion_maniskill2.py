"""Policy Decorator around a frozen Diffusion Policy: learn a residual policy online with SAC.

    python online/pi_dec_diffusion_maniskill2.py --env-id PegInsertionSide-v2 \
        --base-policy-ckpt checkpoints/diffusion_PegInsertionSide/checkpoints/best.pt \
        --res-scale 0.1 --prog-explore 30_000

Each decision the base policy denoises an action chunk with DDIM (--ddim-steps) from the last
obs_horizon observations; the residual actor sees the latest observation and outputs a correction for
the whole chunk of --act-horizon actions:

    executed chunk = base(obs) + res_scale * residual(obs),  residual in [-1, 1]^(act_horizon x act_dim)

The residual is used in each env with probability min(step / prog_explore, 1). The SAC loop, the
critic inputs and the bootstrap handling are in pi_dec/policy_decorator.py (shared with the BeT script).
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import SAMPLING_RULES, DiffusionPolicy, DiffusionSampling
from pi_dec.policy_decorator import ONLINE_RULES, OnlineArgs, load_frozen_base, train, validate
from pi_dec.run import user_errors

ALGO_NAME = "PolicyDecorator-DiffusionPolicy"


@dataclass
class Args(DiffusionSampling, OnlineArgs):  # the sampler flags: --ddim-steps, --ddpm-steps, --act-horizon
    env_id: str = "PegInsertionSide-v2"
    """the task"""
    base_policy_ckpt: str = "checkpoints/diffusion_PegInsertionSide/checkpoints/best.pt"
    """Diffusion Policy checkpoint (<run>/checkpoints/<tag>.pt, with <run>/args.json)"""
    total_timesteps: int = 4_000_000
    """decisions x envs to collect"""
    res_scale: float = 0.1
    """how far the residual may move the base action (alpha in the paper; tune per task)"""
    prog_explore: int = 100_000
    """steps until the residual is used in every env (H in the paper; tune per task)"""


RULES = ONLINE_RULES | SAMPLING_RULES  # what each numeric flag allows


def main(args: Args):
    validate(args, RULES)
    # The frozen base: rebuilt from its args.json, sampled with DDIM (--ddim-steps), executing --act-horizon
    # actions per decision (pi_dec/base_policies.py)
    base = load_frozen_base(args, expect=DiffusionPolicy)
    return train(args, base, ALGO_NAME, __file__)


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
