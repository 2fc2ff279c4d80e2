"""Policy Decorator, online: a frozen base policy refined by a residual policy learned with SAC.

The online scripts (`online/pi_dec_*.py`) run `train()` below; they differ only in their defaults and in
which of our bases they expect. The base is a `FrozenBase` (pi_dec/frozen_base.py): the loop reads its
horizons and dims and calls `base.act`, never asking which policy it wraps (`--base-policy` names your
own). The whole method is in this file, top to bottom:

    action      = base(obs) + res_scale * residual(obs)           (the decorated policy, `combine`)
    P(residual) = min(global_step / prog_explore, 1) per env        (progressive exploration)
    reward      = sparse success reward - 1                         (as in the original)
    critic sees = residual | base + res_scale * residual | [residual, base]   (--critic-input)

One "decision" executes a chunk of the base's `act_horizon` actions (Diffusion Policy: 4; BeT: 1).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pi_dec.frozen_base import FrozenBase, check_base, import_factory
from pi_dec.make_env import asset_kwargs, check_env, finished_episodes, make_vec_env
from pi_dec.rgbd import camera_kwargs
from pi_dec.nets.sac import LOG_STD_MAX, ResidualActor, SoftQNetwork, xavier_init_
from pi_dec.suites import suite_for
from pi_dec.run import (COUNT, POSITIVE, RUN_RULES, Run, RunArgs, StepTimer, UsageError, at_least, between,
                        check_eval_episodes, check_numbers, cli_flag, obs_tensor, reset_at_ends, rng_states, run_episodes,
                        set_rng_states, setup_torch)


@dataclass
class OnlineArgs(RunArgs):
    """Flags shared by both online scripts (each script sets its own defaults on top)."""

    env_id: str = "PegInsertionSide-v2"
    """the task"""
    base_policy_ckpt: str = "checkpoints/diffusion_PegInsertionSide/checkpoints/best.pt"
    """base-policy checkpoint (<run>/checkpoints/<tag>.pt, with <run>/args.json)"""
    base_policy: str | None = None
    """your own base: a factory `module:attribute` called with --base-policy-ckpt (pi_dec/frozen_base.py)"""
    total_timesteps: int = 4_000_000
    """decisions x envs to collect"""
    buffer_size: int | None = None
    """replay buffer capacity in transitions (default: total_timesteps)"""
    gamma: float = 0.97
    """discount factor (per decision)"""
    tau: float = 0.01
    """target-network smoothing"""
    batch_size: int = 1024
    """SAC batch size"""
    learning_starts: int = 8000
    """transitions in the buffer before updates begin"""
    policy_lr: float = 1e-4
    """residual actor learning rate"""
    q_lr: float = 1e-4
    """critic (and entropy temperature) learning rate"""
    policy_frequency: int = 1
    """actor update every N critic updates"""
    target_network_frequency: int = 1
    """target update every N critic updates"""
    sac_alpha: float = 0.2
    """entropy temperature when not autotuned"""
    autotune: bool = True
    """tune the entropy temperature (target entropy = -residual dim)"""
    max_grad_norm: float = 50.0
    """gradient clipping"""
    utd: float = 0.25
    """updates per collected transition"""
    training_freq: int = 64
    """transitions collected between rounds of updates (a multiple of num_envs)"""
    bootstrap_at_done: Literal["always", "never", "truncated"] = "truncated"
    """bootstrap through episode ends: 'truncated' (only time-outs), 'always', or 'never'"""

    res_scale: float = 0.1
    """how far the residual may move the base action (alpha in the paper)"""
    prog_explore: int = 100_000
    """steps until the residual is used in every env (H in the paper)"""
    critic_input: Literal["res", "sum", "concat"] = "sum"
    """action the critic sees: residual, base + res_scale * residual, or [residual, base]"""
    actor_input: Literal["obs", "obs_base_action"] = "obs"
    """residual actor input: latest observation, or that plus the base action"""
    log_std_min: float = -20.0
    """lower bound of the actor's log std"""
    hidden_dim: int = 256
    """width of the three hidden layers of the residual actor and the critics (the original's: 256)"""
    critic_layer_norm: bool = False
    """LayerNorm in the critics' hidden layers (not in the original; the quickstart uses it: README)"""
    update_threads: int | None = None
    """torch CPU threads during SAC updates (default: all cores; the env workers wait then)"""

    eval_freq: int = 50_000
    """evaluate every N steps"""
    num_envs: int = 16
    """parallel training envs"""
    num_eval_episodes: int = 50
    """episodes per evaluation"""
    num_eval_envs: int = 5
    """parallel evaluation envs"""
    log_freq: int = 20_000
    """log training statistics every N steps"""
    save_freq: int | None = 1_000_000
    """checkpoint every N steps and at the end (None: only at the end)"""
    save_buffer: bool = True
    """include the replay buffer in checkpoints (--resume then continues with the same data)"""
    resume: str | None = None
    """continue the run of this checkpoint, in its folder"""


# ------------------------------------------------------------------------------------------------ #
# The decorated policy and its exploration schedule
# ------------------------------------------------------------------------------------------------ #
def exploration_prob(global_step: int, prog_explore: int) -> float:
    """Probability that an env uses the residual at this step: grows linearly to 1 over prog_explore."""
    return min(global_step / prog_explore, 1.0)


def exploration_mask(num_envs: int, global_step: int, prog_explore: int) -> np.ndarray:
    """Which envs use the residual this decision: each independently with probability exploration_prob."""
    return np.random.rand(num_envs) < exploration_prob(global_step, prog_explore)


def combine(base_seq: torch.Tensor, res: torch.Tensor, res_scale: float) -> torch.Tensor:
    """The executed chunk: base (N, H, A) + res_scale * residual (N, H*A), reshaped to (N, H, A)."""
    return base_seq + res_scale * res.view(base_seq.shape)


def critic_action(res: torch.Tensor, base: torch.Tensor, res_scale: float, critic_input: str) -> torch.Tensor:
    """What the critic sees as the action (all flattened (B, H*A))."""
    if critic_input == "res":
        return res
    if critic_input == "sum":
        return base + res_scale * res
    return torch.cat([res, base], dim=1)  # concat


def bootstrap_masks(terminated: np.ndarray, truncated: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(stop_bootstrap, need_final_obs) per env for an episode end.

    'truncated': stop only at termination, and use the final observation after a time-out;
    'always': never stop, use the final observation at any end; 'never': stop at any end.
    """
    done = terminated | truncated
    if mode == "never":
        return done, np.zeros_like(done)
    if mode == "always":
        return np.zeros_like(done), done
    return terminated.copy(), truncated & ~terminated


def actor_input(obs_last: torch.Tensor, base_flat: torch.Tensor | None, mode: str) -> torch.Tensor:
    """What the residual actor sees (--actor-input): the latest observation, or that and the base action."""
    return obs_last if mode == "obs" else torch.cat([obs_last, base_flat], dim=1)


def decorated_policy(base, actor: ResidualActor | None, res_scale: float, actor_input_mode: str, device="cpu"):
    """obs window -> executed chunks (N, H, A) as numpy: the base alone (actor None), or base plus res_scale
    times the actor's deterministic residual (tanh of its mean). Used by every evaluation; `act.reset` is the
    base's (pi_dec.run.run_episodes calls it at episode ends)."""

    @torch.no_grad()
    def act(obs):
        base_seq, obs_last = base.act(obs_tensor(obs, device))
        if actor is None:
            return base_seq.cpu().numpy()
        res = actor.get_eval_action(actor_input(obs_last, base_seq.flatten(1), actor_input_mode))
        return combine(base_seq, res, res_scale).cpu().numpy()
    act.reset = base.reset
    return act



@dataclass
class Learner:
    """What SAC trains: the residual actor, two critics and their targets, the entropy temperature (`alpha`, in
    use; `log_alpha`, tuned when --autotune), and their optimizers."""

    actor: ResidualActor
    qf1: nn.Module
    qf2: nn.Module
    qf1_target: nn.Module
    qf2_target: nn.Module
    q_optimizer: torch.optim.Optimizer
    actor_optimizer: torch.optim.Optimizer
    log_alpha: torch.Tensor
    alpha_optimizer: torch.optim.Optimizer
    alpha: torch.Tensor


def sac_update(args: OnlineArgs, learner: Learner, batch: tuple, updates: int, res_dim: int, keep_base: bool,
               losses: dict) -> dict:
    """Update number `updates` on one sampled batch: the critics; every policy_frequency updates the actor
    (and the temperature, if autotuned); every target_network_frequency updates the target critics.

    Returns `losses` updated with this update's values (for logging); `learner.alpha` is the temperature to use next.
    """
    actor, qf1, qf2, qf1_target, qf2_target = (learner.actor, learner.qf1, learner.qf2, learner.qf1_target,
                                               learner.qf2_target)
    alpha = learner.alpha
    b_obs, b_next_obs, b_act, b_rew, b_stop = batch
    b_res = b_act[:, :res_dim]
    b_base = b_act[:, res_dim:2 * res_dim] if keep_base else None
    b_base_next = b_act[:, 2 * res_dim:] if keep_base else None

    # ALGO LOGIC: critic: clipped double-Q target with the next residual from the actor
    with torch.no_grad():
        next_res, next_log_pi, _ = actor.get_action(actor_input(b_next_obs, b_base_next, args.actor_input))
        next_a = critic_action(next_res, b_base_next, args.res_scale, args.critic_input)
        min_q_next = torch.min(qf1_target(b_next_obs, next_a), qf2_target(b_next_obs, next_a))
        min_q_next = min_q_next - alpha * next_log_pi
        target_q = b_rew + (1 - b_stop) * args.gamma * min_q_next.view(-1)
    cur_a = critic_action(b_res, b_base, args.res_scale, args.critic_input)
    qf1_values, qf2_values = qf1(b_obs, cur_a).view(-1), qf2(b_obs, cur_a).view(-1)
    qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
    learner.q_optimizer.zero_grad()
    (qf1_loss + qf2_loss).backward()
    qf1_grad = nn.utils.clip_grad_norm_(qf1.parameters(), args.max_grad_norm)
    qf2_grad = nn.utils.clip_grad_norm_(qf2.parameters(), args.max_grad_norm)
    learner.q_optimizer.step()
    losses = losses | {"qf1_values": qf1_values.mean(), "qf2_values": qf2_values.mean(), "qf1_loss": qf1_loss,
                       "qf2_loss": qf2_loss, "qf_loss": (qf1_loss + qf2_loss) / 2, "qf1_grad_norm": qf1_grad,
                       "qf2_grad_norm": qf2_grad}

    # ALGO LOGIC: actor: maximize min Q of the decorated action minus the entropy cost
    if updates % args.policy_frequency == 0:
        a_in = actor_input(b_obs, b_base, args.actor_input)
        pi, log_pi, _ = actor.get_action(a_in)
        pi_a = critic_action(pi, b_base, args.res_scale, args.critic_input)
        with frozen(qf1, qf2):  # the critics' weight gradients would be discarded: skip them
            actor_loss = (alpha * log_pi - torch.min(qf1(b_obs, pi_a), qf2(b_obs, pi_a))).mean()
            learner.actor_optimizer.zero_grad()
            actor_loss.backward()
        losses["actor_grad_norm"] = nn.utils.clip_grad_norm_(actor.parameters(), args.max_grad_norm)
        learner.actor_optimizer.step()
        losses["actor_loss"] = actor_loss
        if args.autotune:
            with torch.no_grad():
                _, log_pi, _ = actor.get_action(a_in)
            target_entropy = -float(res_dim)
            # NOTE(original): the loss uses log_alpha, not alpha (as in softlearning).
            alpha_loss = (-learner.log_alpha * (log_pi + target_entropy)).mean()
            learner.alpha_optimizer.zero_grad()
            alpha_loss.backward()
            learner.alpha_optimizer.step()
            alpha = learner.alpha = learner.log_alpha.exp().detach()
            losses["sac_alpha_loss"] = alpha_loss

    # ALGO LOGIC: Polyak averaging of the target critics
    if updates % args.target_network_frequency == 0:
        with torch.no_grad():
            for net, target in ((qf1, qf1_target), (qf2, qf2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.mul_(1 - args.tau).add_(args.tau * p)
    return losses | {"sac_alpha": alpha}


class ReplayBuffer:
    """Preallocated tensors on the training device; uniform sampling over what was stored.

    Each transition keeps the latest observation frame, the next one, the residual, the base action
    and the next state's base action (the last two only when the critic or actor needs them).
    """

    def __init__(self, capacity: int, obs_dim: int, res_dim: int, keep_base: bool, device):
        self.capacity, self.keep_base, self.device = capacity, keep_base, device
        act_dim = 3 * res_dim if keep_base else res_dim
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)  # [res, base, base_next]
        self.rewards = torch.zeros(capacity, device=device)
        self.dones = torch.zeros(capacity, device=device)  # 1 = stop bootstrapping
        self.pos, self.full = 0, False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, obs, next_obs, res, base, base_next, reward, stop):
        n = obs.shape[0]
        idx = (self.pos + torch.arange(n, device=self.device)) % self.capacity
        self.obs[idx], self.next_obs[idx] = obs, next_obs
        self.actions[idx] = torch.cat([res, base, base_next], dim=1) if self.keep_base else res
        self.rewards[idx], self.dones[idx] = reward, stop
        self.full = self.full or self.pos + n >= self.capacity
        self.pos = (self.pos + n) % self.capacity

    def sample(self, batch_size: int, generator: torch.Generator | None = None):
        idx = torch.randint(len(self), (batch_size,), device=self.device, generator=generator)
        return self.obs[idx], self.next_obs[idx], self.actions[idx], self.rewards[idx], self.dones[idx]

    def state_dict(self) -> dict:
        n = len(self)
        return {"obs": self.obs[:n].cpu(), "next_obs": self.next_obs[:n].cpu(), "actions": self.actions[:n].cpu(),
                "rewards": self.rewards[:n].cpu(), "dones": self.dones[:n].cpu(), "pos": self.pos, "full": self.full}

    def load_state_dict(self, state: dict) -> None:
        """Load saved rows oldest first (a full ring starts at its `pos`), so that a resumed run with a larger
        buffer appends after them and a smaller one keeps the newest."""
        n = len(state["rewards"])
        order = torch.arange(n).roll(-state["pos"]) if state["full"] else torch.arange(n)
        order = order[-self.capacity:]
        for key in ("obs", "next_obs", "actions", "rewards", "dones"):
            getattr(self, key)[:len(order)] = state[key][order].to(self.device)
        self.full = len(order) == self.capacity
        self.pos = len(order) % self.capacity


# ------------------------------------------------------------------------------------------------ #
# Training
# ------------------------------------------------------------------------------------------------ #
# What each numeric flag of OnlineArgs allows (the scripts add their own flags'): {field: (test, allowed)}.
ONLINE_RULES = RUN_RULES | {
    "total_timesteps": COUNT, "buffer_size": at_least(1, " (leave it out for --total-timesteps)"),
    "gamma": between(0, 1), "tau": ((lambda v: 0 < v <= 1), "in (0, 1]"), "batch_size": COUNT,
    "learning_starts": at_least(0), "policy_lr": POSITIVE, "q_lr": POSITIVE, "policy_frequency": COUNT,
    "target_network_frequency": COUNT, "sac_alpha": at_least(0), "max_grad_norm": POSITIVE, "utd": POSITIVE,
    "training_freq": COUNT, "res_scale": POSITIVE, "prog_explore": COUNT,
    "log_std_min": ((lambda v: v < LOG_STD_MAX), f"less than {LOG_STD_MAX} (the actor's largest log std)"),
    "hidden_dim": at_least(1, " (the original uses 256)"),
    "update_threads": at_least(1, " (leave it out for all cores)"),
    "eval_freq": at_least(0, " (0: no evaluation)"), "num_envs": COUNT, "num_eval_episodes": COUNT,
    "num_eval_envs": COUNT, "log_freq": COUNT, "save_freq": at_least(0, " (0 or None: only at the end)"),
}


def validate(args: OnlineArgs, rules: dict = ONLINE_RULES) -> None:
    """The flags, before anything starts: each numeric one in its range (`rules`), then combinations."""
    check_numbers(args, rules)
    if args.training_freq % args.num_envs:
        raise UsageError(f"--training-freq {args.training_freq}: must be a multiple of --num-envs ({args.num_envs}).")
    if not (args.training_freq * args.utd).is_integer():
        raise UsageError(f"--utd {args.utd}: must make --training-freq x --utd a whole number of updates "
                         f"(now {args.training_freq} x {args.utd} = {args.training_freq * args.utd}).")
    check_eval_episodes(args)


def check_resume_shapes(saved: dict, args: OnlineArgs) -> None:
    """--resume needs the networks of the checkpoint: the flags that shape them must be the same."""
    defaults = OnlineArgs()
    for name in ("hidden_dim", "critic_layer_norm", "critic_input", "actor_input"):
        then, now = saved.get(name, getattr(defaults, name)), getattr(args, name)
        if then != now:
            raise UsageError(f"--resume: the checkpoint's networks were built with {name}={then}, this run has "
                             f"{name}={now}; resume with the checkpoint's setting of {cli_flag(name)}.")


RESUME_KEYS = ("res_actor", "qf1", "qf2", "qf1_online", "qf2_online", "q_optimizer", "actor_optimizer",
               "alpha_optimizer", "log_sac_alpha", "global_step", "decisions", "updates", "learning_started", "rng",
               "args")


def read_resume(args: OnlineArgs) -> dict:
    """The --resume checkpoint (read with weights_only=True), if it is an online checkpoint this run can continue."""
    from pi_dec.base_policies import CheckpointError, load_torch_file

    path = Path(args.resume)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: not found (online runs write <run>/checkpoints/<step>.pt).")
    ckpt = load_torch_file(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(RESUME_KEYS)
    if missing:
        raise CheckpointError(f"--resume {path}: not a checkpoint of an online run (it lacks {', '.join(missing[:5])}"
                              f"{', ...' if len(missing) > 5 else ''}).")
    if ckpt["args"].get("env_id") != args.env_id:
        raise UsageError(f"--resume {path}: the checkpoint's run is on {ckpt['args'].get('env_id')}, this run on "
                         f"{args.env_id}; pass --env-id {ckpt['args'].get('env_id')}.")
    check_resume_shapes(ckpt["args"], args)
    return ckpt


@contextmanager
def frozen(*nets: nn.Module):
    """Gradients flow through `nets` to their inputs but are not computed for their weights (the actor
    update needs dQ/da only; the original computes the critics' weight gradients there and zeroes them)."""
    params = [p for net in nets for p in net.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def crossed(step: int, span: int, every: int | None) -> bool:
    """Did the last `span` steps cross a multiple of `every`?"""
    return bool(every) and (step - span) // every < step // every


def train(args: OnlineArgs, base: FrozenBase, algo_name: str, script: str) -> Run:
    """Run Policy Decorator around the frozen `base` (pi_dec/frozen_base.py; `load_frozen_base`): envs built for
    what it was trained with, networks sized by its dims and the envs' action space, then the loop."""
    device = setup_torch(args.seed, args.cuda, args.num_threads, args.torch_deterministic)
    base = base.to(device)
    suite = suite_for(args.env_id)
    control_mode = suite.control_mode(base.control_mode)
    env_kwargs = asset_kwargs(args.obj_ids, args.asset_root, args.model_json, args.env_id)
    if base.obs_mode == "rgbd":
        env_kwargs |= camera_kwargs(base.image_size)
    obs_horizon, act_horizon = base.obs_horizon, base.act_horizon
    buffer_size = min(args.buffer_size or args.total_timesteps, args.total_timesteps)
    resume = read_resume(args) if args.resume else None
    envs = make_vec_env(args.env_id, args.num_envs, args.seed, control_mode, obs_horizon,
                        env_kwargs=env_kwargs, asynchronous=not args.sync_venv, obs_mode=base.obs_mode)
    check_fits(base, envs, args.env_id, control_mode)
    run = Run(args, algo_name, script, path=Path(args.resume).parent.parent if resume else None,
              extra={"base_policy": base.config | {"control_mode": control_mode}, "act_horizon_executed": act_horizon})
    n_eval = min(args.num_eval_envs, args.num_eval_episodes)
    eval_envs = make_vec_env(args.env_id, n_eval, args.seed + 1000, control_mode, obs_horizon,
                             video_dir=str(run.path / "videos") if args.capture_video else None,
                             env_kwargs=env_kwargs, asynchronous=not args.sync_venv, obs_mode=base.obs_mode)
    eval_envs.reset(seed=args.seed + 1000)  # seeded once; evaluations continue from here
    obs_dim, act_dim = base.res_obs_dim, base.act_dim  # what the residual sees; one action
    res_dim = act_horizon * act_dim  # the residual covers the whole chunk

    # ALGO LOGIC: networks
    actor_in = obs_dim + (res_dim if args.actor_input == "obs_base_action" else 0)
    critic_act = 2 * res_dim if args.critic_input == "concat" else res_dim
    actor = ResidualActor(actor_in, res_dim, args.log_std_min, args.hidden_dim).to(device)

    def critic() -> SoftQNetwork:
        return SoftQNetwork(obs_dim, critic_act, args.hidden_dim, args.critic_layer_norm).to(device)

    qf1, qf2 = critic(), critic()
    if "PushChair" in args.env_id:  # ManiSkill1-style envs: the original initializes all Linear layers so
        xavier_init_(actor, qf1, qf2)
    qf1_target, qf2_target = critic(), critic()
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    # NOTE(original): autotuning starts at alpha = 1; on short CPU budgets its entropy bonus outweighs the
    # -1 per-step reward (README, "Quickstart"), where --no-autotune --sac-alpha 0.01 is used instead.
    log_alpha = torch.zeros(1, device=device, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.q_lr)
    alpha = log_alpha.exp().detach() if args.autotune else torch.tensor(args.sac_alpha, device=device)
    keep_base = args.critic_input != "res" or args.actor_input == "obs_base_action"
    rb = ReplayBuffer(buffer_size, obs_dim, res_dim, keep_base, device)

    global_step = decisions = updates = 0
    learning_started = False
    losses = {}  # the latest update's values, for logging
    if resume:
        try:
            actor.load_state_dict(resume["res_actor"])
            qf1_target.load_state_dict(resume["qf1"])
            qf2_target.load_state_dict(resume["qf2"])
            qf1.load_state_dict(resume["qf1_online"])
            qf2.load_state_dict(resume["qf2_online"])
            q_optimizer.load_state_dict(resume["q_optimizer"])
            actor_optimizer.load_state_dict(resume["actor_optimizer"])
            alpha_optimizer.load_state_dict(resume["alpha_optimizer"])
            if "buffer" in resume:
                rb.load_state_dict(resume["buffer"])
        except (RuntimeError, ValueError, KeyError) as err:  # another base policy, act_horizon or buffer size
            raise UsageError(f"--resume {args.resume}: its networks or buffer do not fit this run "
                             f"({' '.join(str(err).split())[:300]}).") from None
        with torch.no_grad():
            log_alpha.copy_(resume["log_sac_alpha"])
        alpha = log_alpha.exp().detach() if args.autotune else alpha
        global_step, decisions, updates = resume["global_step"], resume["decisions"], resume["updates"]
        learning_started = resume["learning_started"]
        set_rng_states(resume["rng"])
        print(f"resumed {args.resume} at step {global_step} (buffer: {len(rb)} transitions)")

    def checkpoint() -> Path:
        ckpt = {  # the original's keys (NOTE(original): qf1/qf2 hold the *target* critics) ...
            "res_actor": actor.state_dict(), "qf1": qf1_target.state_dict(), "qf2": qf2_target.state_dict(),
            "log_sac_alpha": log_alpha.detach().clone(),
            # ... and what --resume needs
            "qf1_online": qf1.state_dict(), "qf2_online": qf2.state_dict(),
            "q_optimizer": q_optimizer.state_dict(), "actor_optimizer": actor_optimizer.state_dict(),
            "alpha_optimizer": alpha_optimizer.state_dict(), "global_step": global_step, "decisions": decisions,
            "updates": updates, "learning_started": learning_started,
            "rng": rng_states(),  # tensors and plain values, so that --resume loads with weights_only=True
            "args": dataclasses.asdict(args),
        }
        if args.save_buffer:
            ckpt["buffer"] = rb.state_dict()
        return run.save(ckpt, str(global_step))

    def evaluate() -> dict:
        actor.eval()
        act = decorated_policy(base, actor, args.res_scale, args.actor_input, device)
        result = run_episodes(args.num_eval_episodes, act, eval_envs)
        actor.train()
        return result

    learner = Learner(actor, qf1, qf2, qf1_target, qf2_target, q_optimizer, actor_optimizer, log_alpha,
                      alpha_optimizer, alpha)

    # --------------------------------------------------------------------------------------------- #
    obs, _ = envs.reset(seed=args.seed + global_step)  # (N, obs_horizon, obs_dim) or RGB-D windows
    reset_at_ends(base, np.ones(args.num_envs, dtype=bool))
    base_seq, obs_last = base.act(obs_tensor(obs, device))  # (N, act_horizon, act_dim), (N, res_obs_dim)
    updates_per_round = int(args.training_freq * args.utd)
    # Collection and updates take turns: while the MLPs train, the env workers sit idle, so the updates
    # may use every core; collection keeps --num-threads (the workers need the other cores then).
    collect_threads, update_threads = torch.get_num_threads(), args.update_threads or os.cpu_count() or 1
    train_stats = defaultdict(list)  # episodes that ended in collection (NOTE(fix): never mixed with eval)
    timer = StepTimer()
    start_step, start_time = global_step, time.time()
    progress = tqdm(total=args.total_timesteps, initial=global_step, desc=algo_name, unit="step", dynamic_ncols=True)
    while global_step < args.total_timesteps:
        # ---- collect training_freq transitions -------------------------------------------------- #
        for _ in range(args.training_freq // args.num_envs):
            global_step += args.num_envs
            decisions += 1
            # ALGO LOGIC: progressive exploration: each env uses the residual with probability p
            use_res = torch.as_tensor(exploration_mask(args.num_envs, global_step, args.prog_explore), device=device)
            base_flat = base_seq.flatten(1)
            if not learning_started:  # before the first update the residual is uniform in [-1, 1]
                res = torch.rand(args.num_envs, res_dim, device=device) * 2 - 1
            else:
                with torch.no_grad():
                    res, _, _ = actor.get_action(actor_input(obs_last, base_flat, args.actor_input))
            res = res * use_res[:, None]  # a residual of 0: the base policy acts alone
            action_seq = combine(base_seq, res, args.res_scale)  # ALGO LOGIC: base + res_scale * residual
            timer.lap("collect/policy")

            next_obs, reward, terminated, truncated, infos = envs.step(action_seq.cpu().numpy())
            timer.lap("collect/env")
            for info in finished_episodes(infos):
                train_stats["return"].append(float(np.ravel(info["episode"]["r"])[0]))
                train_stats["len"].append(int(np.ravel(info["episode"]["l"])[0]))
                train_stats["success"].append(float(info["success"]))

            # ALGO LOGIC: bootstrap handling at episode ends
            stop, need_final = bootstrap_masks(terminated, truncated, args.bootstrap_at_done)
            reset_at_ends(base, terminated | truncated)
            # The next decision's base call doubles as the next state's in the buffer (its base action and
            # what the residual sees); only envs whose transition ends in a final observation (the one
            # before the automatic reset) need their own call on it.
            next_base_seq, next_last = base.act(obs_tensor(next_obs, device))
            real_next_last, base_next_flat = next_last, next_base_seq.flatten(1)
            if need_final.any():  # (copies: next_last and next_base_seq serve the next decision unchanged)
                finals = np.flatnonzero(need_final)
                final_obs = [infos["final_observation"][i] for i in finals]
                final_obs = ({k: np.stack([o[k] for o in final_obs]) for k in final_obs[0]}
                             if isinstance(final_obs[0], dict) else np.stack(final_obs))
                final_seq, final_last = base.act(obs_tensor(final_obs, device))
                rows = torch.as_tensor(finals, device=device)
                real_next_last, base_next_flat = real_next_last.clone(), base_next_flat.clone()
                real_next_last[rows], base_next_flat[rows] = final_last, final_seq.flatten(1)
            timer.lap("collect/base_policy")
            rb.add(obs_last, real_next_last, res, base_flat, base_next_flat,
                   torch.as_tensor(reward - 1.0, dtype=torch.float32, device=device),  # sparse reward - 1
                   torch.as_tensor(stop, dtype=torch.float32, device=device))
            obs_last, base_seq = next_last, next_base_seq
            timer.lap("collect/buffer")
        progress.update(args.training_freq)

        # ---- SAC updates -------------------------------------------------------------------------- #
        if len(rb) >= args.learning_starts:
            learning_started = True
            torch.set_num_threads(update_threads)
            for _ in range(updates_per_round):
                updates += 1
                losses = sac_update(args, learner, rb.sample(args.batch_size), updates, res_dim, keep_base, losses)
            torch.set_num_threads(collect_threads)
            timer.lap("update")

        # ---- logging, evaluation, checkpoints ------------------------------------------------------ #
        if crossed(global_step, args.training_freq, args.log_freq):
            elapsed = time.time() - start_time
            scalars = {f"train/{k}": np.mean(v) for k, v in train_stats.items()}
            train_stats = defaultdict(list)
            scalars |= {"time/decisions": decisions, "time/updates": updates,
                        "time/env_steps": decisions * args.num_envs * act_horizon,
                        "time/SPS": (global_step - start_step) / elapsed,
                        "time/env_SPS": (global_step - start_step) * act_horizon / elapsed,
                        "time/wall_seconds": time.time() - run.start_time, **timer.scalars("time/seconds_"),
                        "charts/exploration_prob": exploration_prob(global_step, args.prog_explore)}
            if learning_started:
                scalars |= {f"losses/{k}": v for k, v in losses.items()}
            run.log({k: v.item() if torch.is_tensor(v) else v for k, v in scalars.items()}, global_step)
            if "train/success" in scalars:
                progress.set_postfix(success=f"{scalars['train/success']:.2f}")
        if crossed(global_step, args.training_freq, args.eval_freq):
            run.record_eval(evaluate(), global_step)
            timer.lap("eval")
        if global_step >= args.total_timesteps or crossed(global_step, args.training_freq, args.save_freq):
            checkpoint()
    progress.close()
    envs.close()
    eval_envs.close()
    run.close()
    return run


def check_fits(base: FrozenBase, envs, env_id: str, control_mode: str) -> None:
    """The base reads the envs' observations and acts in their action space, or a one-line UsageError."""
    space = envs.single_observation_space
    obs_dim = (space["state"] if base.obs_mode == "rgbd" else space).shape[-1]
    act_dim = envs.single_action_space.shape[0]
    if (base.obs_dim, base.act_dim) != (obs_dim, act_dim):
        envs.close()
        raise UsageError(f"the base policy reads observations of {base.obs_dim} and outputs actions of {base.act_dim}, "
                         f"but {env_id} with control mode {control_mode} has {obs_dim} and {act_dim}: was it trained "
                         "on another task or control mode?")


def load_frozen_base(args: OnlineArgs, expect: type) -> FrozenBase:
    """Check the env, then read the frozen base: the user's factory (--base-policy) called with the checkpoint
    path, or ours, from the checkpoint's weights and args.json, set up as the script's flags say. `expect` is
    the class of ours the calling script is for."""
    from pi_dec.base_policies import load_base

    check_env(args.env_id, asset_kwargs(args.obj_ids, args.asset_root, args.model_json, args.env_id))  # assets first
    if args.base_policy:
        return check_base(import_factory(args.base_policy)(args.base_policy_ckpt), f"--base-policy {args.base_policy}")
    return load_base(args.base_policy_ckpt, dataclasses.asdict(args), expect)
