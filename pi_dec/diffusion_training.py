"""Diffusion Policy's offline training, shared by offline/diffusion_policy_unet_maniskill2.py (state observations)
and offline/diffusion_policy_unet_maniskill2_rgbd.py (RGB-D): their flags, every window of the demonstrations,
and the denoising loop with its EMA weights. The scripts build the data and the policy and call `fit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from pi_dec.demo_data import random_batches
from pi_dec.errors import UsageError
from pi_dec.run import (COUNT, OFFLINE_RULES, Run, RunArgs, StepTimer, check_eval_episodes, check_numbers, obs_tensor,
                        run_episodes)


@dataclass
class DiffusionTrainArgs(RunArgs):
    """The flags of both offline Diffusion Policy scripts (each sets its own defaults on top)."""

    env_id: str = "PegInsertionSide-v2"
    """the task"""
    demo_path: str = "data/PegInsertionSide/trajectory.h5"
    """demonstrations (ManiSkill2 trajectory .h5 with its .json; for Adroit also a Minari dataset folder)"""
    num_demo_traj: int | None = None
    """use the first N trajectories (all by default)"""
    total_iters: int = 1_000_000
    """training iterations (easy tasks need fewer)"""
    batch_size: int = 1024
    """batch size (2048 did not improve further)"""

    lr: float = 1e-4
    """learning rate (1e-4 is a safe choice)"""
    obs_horizon: int = 2
    """observations the policy sees (1, 2, 4 all work in ManiSkill)"""
    act_horizon: int = 4
    """actions executed per decision (4, 8, 15 all work in ManiSkill)"""
    pred_horizon: int = 16
    """actions predicted per decision (16 -> 8 hurts; 32 barely helps)"""
    diffusion_step_embed_dim: int = 64
    """size of the diffusion-step embedding"""
    unet_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    """channels per U-Net level (~4.5M parameters)"""
    n_groups: int = 8
    """GroupNorm groups (4 and 8 are similar)"""

    log_freq: int = 1000
    """log losses every N iterations"""
    eval_freq: int = 10_000
    """evaluate every N iterations"""
    save_freq: int | None = 100_000
    """save a checkpoint every N iterations (None: never)"""
    num_eval_episodes: int = 100
    """episodes per evaluation"""
    num_eval_envs: int = 10
    """parallel evaluation envs (too many biases towards short episodes)"""
    control_mode: str | None = None
    """control mode; must match the demonstrations (default: pd_ee_delta_pose on ManiSkill2 tasks, Adroit's
    only mode pd_joint_pos on Adroit tasks)"""


# What each numeric flag allows; check_args adds the combinations.
RULES = OFFLINE_RULES | {
    "obs_horizon": COUNT, "act_horizon": COUNT, "pred_horizon": COUNT, "n_groups": COUNT,
    "diffusion_step_embed_dim": ((lambda v: v >= 4 and v % 2 == 0), "an even number >= 4 (half sines, half cosines)"),
    "unet_dims": ((lambda v: len(v) > 0 and min(v) >= 1), "one or more channel counts >= 1"),
}


def check_args(args: DiffusionTrainArgs, rules: dict = RULES) -> None:
    check_numbers(args, rules)
    check_eval_episodes(args)
    if args.obs_horizon + args.act_horizon - 1 > args.pred_horizon:  # the executed chunk must be predicted
        raise UsageError(f"--pred-horizon {args.pred_horizon}: must be at least --obs-horizon + --act-horizon - 1 "
                         f"= {args.obs_horizon + args.act_horizon - 1}.")
    halvings = len(args.unet_dims) - 1  # one per U-Net level after the first; the up path doubles back
    if args.pred_horizon % 2**halvings:
        raise UsageError(f"--pred-horizon {args.pred_horizon}: must be a multiple of {2**halvings} (the U-Net "
                         f"halves it {halvings} times with {len(args.unet_dims)} --unet-dims levels).")
    if any(d % args.n_groups for d in args.unet_dims) or args.unet_dims[0] % 8:
        raise UsageError(f"--unet-dims {' '.join(map(str, args.unet_dims))}: must be multiples of --n-groups "
                         f"({args.n_groups}), and the first of 8 (the final block's groups).")


# ------------------------------------------------------------------------------------------------ #
# Data: every window of the demonstrations, batched by indexing into padded tensors
# ------------------------------------------------------------------------------------------------ #
def pad_action_for(control_mode: str, last_action: torch.Tensor) -> torch.Tensor:
    """The action that means "stay" after the last one: zero arm motion with the last gripper command in
    delta (and velocity) modes; in pd_joint_pos (absolute targets, Adroit's only mode) the last action."""
    # NOTE(original): "delta_pos" also matches pd_ee_delta_pose.
    if "delta_pos" in control_mode or control_mode == "base_pd_joint_vel_arm_pd_joint_vel":
        stay = torch.zeros_like(last_action)
        stay[-1] = last_action[-1]  # keep the gripper as it was
        return stay
    if control_mode == "pd_joint_pos":  # an extension: the original pads delta modes only
        return last_action.clone()
    raise UsageError(f"Diffusion Policy pads action sequences with 'stay', which control mode {control_mode!r} "
                     "cannot express: use a delta mode (pd_ee_delta_pose, pd_ee_delta_pos, pd_joint_delta_pos), "
                     "pd_joint_pos or base_pd_joint_vel_arm_pd_joint_vel.")


class WindowDataset:
    """All (obs window, action window) pairs, as index arithmetic on padded per-trajectory tensors.

    A window starting at step s holds observations s .. s+obs_horizon-1 and actions s .. s+pred_horizon-1.
    Starts run from -(obs_horizon-1) (observations repeat the first, actions the first action) to
    L-obs_horizon, so every observation 0..L-1 is the latest one of some window; actions past the end
    "stay" (pad_action_for).
    """

    def __init__(self, trajs: list[dict], obs_horizon: int, pred_horizon: int, control_mode: str, device):
        self.obs_horizon, self.pred_horizon = obs_horizon, pred_horizon
        pad_before, pad_after = obs_horizon - 1, pred_horizon - obs_horizon
        obs_chunks, act_chunks, obs_starts, act_starts = [], [], [], []
        obs_offset = act_offset = 0
        for traj in trajs:
            act = torch.as_tensor(traj["actions"])
            L = len(act)
            stay = pad_action_for(control_mode, act[-1])
            # state obs: one (L+1, obs_dim) array; RGB-D obs: a dict of them (pi_dec/rgbd.py), handled per key
            obs_chunks.append(obs_map(lambda o: torch.cat([o[:1].repeat_interleave(pad_before, 0), o]), traj["obs"]))
            act_chunks.append(torch.cat([act[:1].repeat(pad_before, 1), act, stay.repeat(pad_after, 1)]))
            # NOTE(fix): the original's range(-pad_before, L - obs_horizon) missed the last start, so the
            # observation before the final action never served as the latest one; we include it.
            starts = torch.arange(-pad_before, L - obs_horizon + 1)
            obs_starts.append(obs_offset + pad_before + starts)
            act_starts.append(act_offset + pad_before + starts)
            obs_offset += L + 1 + pad_before
            act_offset += len(act_chunks[-1])
        self.obs = obs_map(lambda *o: torch.cat(o).to(device), *obs_chunks)  # (sum of padded lengths, obs_dim)
        self.act = torch.cat(act_chunks).to(device)
        self.obs_start = torch.cat(obs_starts).to(device)  # (num windows,)
        self.act_start = torch.cat(act_starts).to(device)
        self.num_transitions = sum(len(t["actions"]) for t in trajs)

    def __len__(self) -> int:
        return len(self.obs_start)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs_seq (B, obs_horizon, obs_dim), act_seq (B, pred_horizon, act_dim)."""
        obs_idx = self.obs_start[idx, None] + torch.arange(self.obs_horizon, device=idx.device)
        act_idx = self.act_start[idx, None] + torch.arange(self.pred_horizon, device=idx.device)
        return obs_map(lambda o: o[obs_idx], self.obs), self.act[act_idx]


def obs_map(fn, *obs):
    """fn applied to state observations (tensors), or key by key to RGB-D ones (dicts of tensors)."""
    if isinstance(obs[0], dict):
        return {k: fn(*(torch.as_tensor(o[k]) for o in obs)) for k in obs[0]}
    return fn(*(torch.as_tensor(o) for o in obs))


# ------------------------------------------------------------------------------------------------ #
def fit(args: DiffusionTrainArgs, agent, ema_agent, data: WindowDataset, run: Run, eval_envs, device,
        desc: str = "Diffusion Policy") -> Run:
    """Train `agent` on random windows of `data` for args.total_iters iterations; `ema_agent` receives the EMA
    weights for evaluations (on `eval_envs`, if any) and checkpoints ({'agent', 'ema_agent'}, as the original)."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    # fused: one kernel for all parameters instead of ~10 small ops per tensor (same update; ~5 ms of
    # ~65 ms per iteration on a 2-core CPU).
    optimizer = torch.optim.AdamW(agent.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6, fused=True)
    # Cosine decay with 500 warm-up steps, stepped every batch.
    lr_schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=500, num_training_steps=args.total_iters)
    ema = EMAModel(parameters=agent.parameters(), power=0.75, foreach=True)

    def checkpoint():
        ema.copy_to(ema_agent.parameters())
        return {"agent": agent.state_dict(), "ema_agent": ema_agent.state_dict()}

    def evaluate() -> dict:
        ema.copy_to(ema_agent.parameters())  # evaluate the EMA weights
        ema_agent.eval()
        return run_episodes(args.num_eval_episodes, lambda obs: ema_agent.get_action(obs_tensor(obs, device)).cpu().numpy(),
                            eval_envs)

    # ---------------------------------------------------------------------------------------- #
    # ALGO LOGIC: denoising loss on random windows
    # ---------------------------------------------------------------------------------------- #
    timer = StepTimer()
    agent.train()
    progress = tqdm(range(1, args.total_iters + 1), desc=desc, dynamic_ncols=True)
    for it, idx in zip(progress, random_batches(len(data), args.batch_size, device)):
        obs_seq, act_seq = data.batch(idx)  # RGB-D: obs_seq is {rgb, depth, state} of (B, obs_horizon, ...)
        loss = agent.compute_loss(obs_seq, act_seq)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        ema.step(agent.parameters())
        timer.lap("update")

        if it % args.log_freq == 0:
            loss_value = loss.item()  # the only host sync outside evaluation
            progress.set_postfix(loss=f"{loss_value:.4f}")
            run.log({"losses/total_loss": loss_value, "charts/learning_rate": optimizer.param_groups[0]["lr"],
                     "time/wall_seconds": time.time() - run.start_time, **timer.scalars()}, it)
        if eval_envs is not None and it % args.eval_freq == 0:
            if run.record_eval(evaluate(), it):
                run.save(checkpoint(), "best")
            timer.lap("eval")
        if args.save_freq and it % args.save_freq == 0:
            run.save(checkpoint(), str(it))
    if eval_envs is None:  # never evaluated: the final weights are the best we know
        run.save(checkpoint(), "best")
    else:
        eval_envs.close()
    run.close()
    return run
