"""Policy Decorator around a frozen Behavior Transformer: learn a residual policy online with SAC.

    python online/pi_dec_bet_maniskill2.py --env-id StackCube-v0 \
        --base-policy-ckpt checkpoints/bet_StackCube/checkpoints/best.pt \
        --res-scale 0.03 --prog-explore 1_000_000

Each step the base policy reads the last context_window observations and outputs one action; the
residual actor sees the latest observation and outputs a correction:

    executed action = base(obs) + res_scale * residual(obs),  residual in [-1, 1]^act_dim

The residual is used in each env with probability min(step / prog_explore, 1). The SAC loop, the
critic inputs and the bootstrap handling are in pi_dec/policy_decorator.py (shared with the Diffusion
Policy script, where one decision is a chunk of actions; here a chunk is one action).
"""

from __future__ import annotations

from dataclasses import dataclass

import tyro

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import BeTPolicy
from pi_dec.policy_decorator import ONLINE_RULES, OnlineArgs, load_frozen_base, train, validate
from pi_dec.run import user_errors

ALGO_NAME = "PolicyDecorator-BeT"


@dataclass
class Args(OnlineArgs):
    env_id: str = "StackCube-v0"
    """the task"""
    base_policy_ckpt: str = "checkpoints/bet_StackCube/checkpoints/best.pt"
    """BeT checkpoint (<run>/checkpoints/<tag>.pt, with <run>/args.json)"""
    total_timesteps: int = 3_000_000
    """steps x envs to collect"""
    res_scale: float = 0.2
    """how far the residual may move the base action (alpha in the paper; tune per task)"""
    prog_explore: int = 2_000_000
    """steps until the residual is used in every env (H in the paper; tune per task)"""


RULES = ONLINE_RULES  # what each numeric flag allows (this script adds none)


def main(args: Args):
    validate(args, RULES)
    # The frozen base reads context_window observations and outputs one action; NOTE(original): dropout stays on
    base = load_frozen_base(args, expect=BeTPolicy)
    return train(args, base, ALGO_NAME, __file__)


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
