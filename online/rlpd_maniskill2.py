"""RLPD, a pure-RL baseline that learns from the same demonstrations (Ball, Smith, Kostrikov, Levine,
"Efficient Online Reinforcement Learning with Offline Data", ICML 2023): SAC from scratch, with

    every batch       = half demonstrations + half online transitions   (symmetric sampling)
    critics           = an ensemble of --num-qs LayerNorm MLPs; the target takes the min over a random
                        subset of --num-min-qs of them (RLPD's RedQ-style target)
    updates per step  = --utd critic updates, then one actor and temperature update

    python online/rlpd_maniskill2.py --env-id AdroitHandDoorSparse-v1 --demo-path data/AdroitDoor/trajectory.h5

No base policy: the actor is the whole policy, one action per env step. Tasks, reward (success - 1 per step,
the episode ends at the first success) and evaluation are Policy Decorator's, so the two compare directly.
Defaults are RLPD's Adroit command (ikostrikov/rlpd: README "Adroit Binary", configs/rlpd_config.py,
sac_config.py, td_config.py): utd 20, 10 critics with a min over 2, LayerNorm, three hidden layers of 256,
learning rates 3e-4, batch 256, discount 0.99, tau 0.005, temperature from 1.0 towards entropy -A/2, no entropy
term in the critic target, 5,000 random steps first. On a CPU, budgets lower --utd and --num-qs (README).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.make_env import asset_kwargs, check_env, finished_episodes, make_vec_env
from pi_dec.nets.sac import ResidualActor, SoftQNetwork, from_unit, to_unit  # RLPD rescales actions to [-1, 1]
from pi_dec.policy_decorator import ReplayBuffer, bootstrap_masks, crossed, frozen, obs_tensor
from pi_dec.run import (COUNT, POSITIVE, RUN_RULES, Run, RunArgs, StepTimer, UsageError, at_least, between,
                        check_eval_episodes, check_numbers, run_episodes, setup_torch, user_errors)
from pi_dec.suites import suite_for

ALGO_NAME = "RLPD"


@dataclass
class Args(RunArgs):
    env_id: str = "AdroitHandDoorSparse-v1"
    """the task"""
    demo_path: str = "data/AdroitHandDoorSparse/trajectory.h5"
    """demonstrations (the offline scripts' files), half of every batch"""
    num_demo_traj: int | None = None
    """use only the first N demonstrations (default: all)"""
    control_mode: str | None = None
    """control mode; must match the demonstrations (default: the task's)"""
    total_timesteps: int = 1_000_000
    """env steps to collect (all envs together)"""
    buffer_size: int | None = None
    """online replay capacity in transitions (default: total_timesteps)"""
    gamma: float = 0.99
    """discount factor (per env step)"""
    tau: float = 0.005
    """target-network smoothing"""
    batch_size: int = 256
    """SAC batch size (half demonstrations, half online data: --demo-ratio)"""
    demo_ratio: float = 0.5
    """share of each batch drawn from the demonstrations"""
    learning_starts: int = 5_000
    """random-action env steps before updates begin"""
    policy_lr: float = 3e-4
    """actor learning rate"""
    q_lr: float = 3e-4
    """critic and temperature learning rate"""
    utd: float = 20.0
    """critic updates per env step (an actor update follows every max(1, utd) of them)"""
    num_qs: int = 10
    """critics in the ensemble"""
    num_min_qs: int = 2
    """critics the target takes its min over (a fresh random subset each update)"""
    critic_layer_norm: bool = True
    """LayerNorm in the critics' hidden layers (RLPD's key change to SAC)"""
    hidden_dim: int = 256
    """width of the three hidden layers of actor and critics"""
    backup_entropy: bool = False
    """subtract the entropy term in the critic target (RLPD turns it off for sparse Adroit)"""
    init_temperature: float = 1.0
    """initial entropy temperature (tuned towards an entropy of -action_dim / 2)"""
    bootstrap_at_done: str = "truncated"
    """bootstrap through time-outs only (as Policy Decorator's default)"""

    eval_freq: int = 50_000
    """evaluate every N env steps"""
    num_envs: int = 1
    """parallel training envs (RLPD: one)"""
    num_eval_episodes: int = 50
    """episodes per evaluation"""
    num_eval_envs: int = 5
    """parallel evaluation envs"""
    log_freq: int = 10_000
    """log training statistics every N env steps"""
    save_freq: int | None = 1_000_000
    """checkpoint every N env steps and at the end"""
    training_freq: int = 64
    """env steps collected between rounds of updates (a multiple of num_envs)"""
    update_threads: int | None = None
    """torch CPU threads during updates (default: all cores)"""


RULES = RUN_RULES | {
    "total_timesteps": COUNT, "buffer_size": at_least(1), "gamma": between(0, 1), "tau": between(0, 1),
    "batch_size": at_least(2), "demo_ratio": between(0, 1), "learning_starts": at_least(0), "policy_lr": POSITIVE,
    "q_lr": POSITIVE, "utd": POSITIVE, "num_qs": at_least(1), "num_min_qs": at_least(1), "hidden_dim": COUNT,
    "init_temperature": POSITIVE, "eval_freq": at_least(0, " (0: no evaluation)"), "num_envs": COUNT,
    "num_eval_episodes": COUNT, "num_eval_envs": COUNT, "log_freq": COUNT, "save_freq": at_least(0),
    "training_freq": COUNT, "update_threads": at_least(1), "num_demo_traj": COUNT,
}


def validate(args: Args) -> None:
    check_numbers(args, RULES)
    if args.num_min_qs > args.num_qs:
        raise UsageError(f"--num-min-qs {args.num_min_qs}: at most --num-qs ({args.num_qs}).")
    if args.training_freq % args.num_envs:
        raise UsageError(f"--training-freq {args.training_freq}: must be a multiple of --num-envs ({args.num_envs}).")
    if not (args.training_freq * args.utd).is_integer():
        raise UsageError(f"--utd {args.utd}: must make --training-freq x --utd a whole number of updates.")
    if args.bootstrap_at_done not in ("always", "never", "truncated"):
        raise UsageError(f"--bootstrap-at-done {args.bootstrap_at_done}: one of always, never, truncated.")
    check_eval_episodes(args)


# ------------------------------------------------------------------------------------------------ #
# Demonstrations as transitions, in the online reward convention
# ------------------------------------------------------------------------------------------------ #
def demo_transitions(trajs: list[dict], first_success: list[int | None]) -> dict[str, np.ndarray]:
    """(obs, next_obs, action, reward, stop) of every demo step up to its first success, which ends the
    episode online: reward success - 1 (so 0 at that step, -1 before it), and no bootstrap after it. A demo
    without a recorded first success is taken whole, its last step as the success."""
    parts = defaultdict(list)
    for traj, first in zip(trajs, first_success):
        n = len(traj["actions"]) if first is None else min(first + 1, len(traj["actions"]))
        parts["obs"].append(traj["obs"][:n])
        parts["next_obs"].append(traj["obs"][1:n + 1])
        parts["action"].append(traj["actions"][:n])
        reward = -np.ones(n, dtype=np.float32)
        reward[-1] = 0.0
        parts["reward"].append(reward)
        parts["stop"].append((reward == 0).astype(np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def recorded_first_success(demo_path: str, num_traj: int | None) -> list[int | None]:
    """Each demo's first success step from its trajectory .json (pi_dec.demos records it), in the order
    load_demos reads them (by episode id); None where it is not recorded (other demo files)."""
    meta_path = Path(demo_path).with_suffix(".json")
    if not meta_path.is_file():
        return [None] * (num_traj or 10**6)
    episodes = sorted(json.loads(meta_path.read_text())["episodes"], key=lambda ep: int(ep["episode_id"]))
    return [ep.get("first_success") for ep in episodes][:num_traj]


# ------------------------------------------------------------------------------------------------ #
# The update
# ------------------------------------------------------------------------------------------------ #
def critic_update(args: Args, batch: tuple, actor: ResidualActor, critics: list, targets: list, q_optimizer,
                  log_temp: torch.Tensor) -> dict:
    """One critic step: every ensemble member regresses onto the min over a random subset of the targets."""
    b_obs, b_next_obs, b_act, b_rew, b_stop = batch
    with torch.no_grad():
        next_a, next_log_pi, _ = actor.get_action(b_next_obs)
        subset = torch.randperm(len(targets))[:args.num_min_qs].tolist()
        next_q = torch.stack([targets[i](b_next_obs, next_a).view(-1) for i in subset]).min(0).values
        if args.backup_entropy:
            next_q = next_q - log_temp.exp() * next_log_pi.view(-1)
        target_q = b_rew + (1 - b_stop) * args.gamma * next_q
    qs = torch.stack([q(b_obs, b_act).view(-1) for q in critics])  # (num_qs, B)
    q_loss = F.mse_loss(qs, target_q.expand_as(qs))
    q_optimizer.zero_grad()
    q_loss.backward()
    q_optimizer.step()
    with torch.no_grad():
        for net, target in zip(critics, targets):
            for p, tp in zip(net.parameters(), target.parameters()):
                tp.mul_(1 - args.tau).add_(args.tau * p)
    return {"qf_loss": q_loss, "qf_values": qs.mean()}


def actor_update(batch_obs: torch.Tensor, actor: ResidualActor, critics: list, actor_optimizer, log_temp: torch.Tensor,
                 temp_optimizer, target_entropy: float) -> dict:
    """The actor maximizes the ensemble's mean Q plus entropy; the temperature moves the entropy to its target."""
    pi, log_pi, _ = actor.get_action(batch_obs)
    with frozen(*critics):
        q = torch.stack([qf(batch_obs, pi).view(-1) for qf in critics]).mean(0)
        actor_loss = (log_temp.exp().detach() * log_pi.view(-1) - q).mean()
        actor_optimizer.zero_grad()
        actor_loss.backward()
    actor_optimizer.step()
    entropy = -log_pi.detach().mean()
    temp_loss = log_temp.exp() * (entropy - target_entropy)
    temp_optimizer.zero_grad()
    temp_loss.backward()
    temp_optimizer.step()
    return {"actor_loss": actor_loss, "entropy": entropy, "temperature": log_temp.exp().detach(),
            "temperature_loss": temp_loss}


# ------------------------------------------------------------------------------------------------ #
def main(args: Args) -> Run:
    validate(args)
    suite = suite_for(args.env_id)
    env_kwargs = asset_kwargs(args.obj_ids, args.asset_root, args.model_json, args.env_id)
    check_env(args.env_id, env_kwargs)
    control_mode = suite.control_mode(args.control_mode)
    trajs = suite.load_demos(args.demo_path, args.env_id, control_mode, args.num_demo_traj)
    demos = demo_transitions(trajs, recorded_first_success(args.demo_path, args.num_demo_traj))
    device = setup_torch(args.seed, args.cuda, args.num_threads, args.torch_deterministic)
    run = Run(args, ALGO_NAME, __file__, extra={"control_mode": control_mode, "act_horizon_executed": 1})

    envs = make_vec_env(args.env_id, args.num_envs, args.seed, control_mode, 1, env_kwargs=env_kwargs,
                        asynchronous=not args.sync_venv)
    n_eval = min(args.num_eval_envs, args.num_eval_episodes)
    eval_envs = make_vec_env(args.env_id, n_eval, args.seed + 1000, control_mode, 1, env_kwargs=env_kwargs,
                             video_dir=str(run.path / "videos") if args.capture_video else None,
                             asynchronous=not args.sync_venv)
    eval_envs.reset(seed=args.seed + 1000)
    obs_dim, act_dim = envs.single_observation_space.shape[-1], envs.single_action_space.shape[0]
    if demos["obs"].shape[1] != obs_dim or demos["action"].shape[1] != act_dim:
        raise UsageError(f"{args.demo_path}: demos with obs/action dims {demos['obs'].shape[1]}/"
                         f"{demos['action'].shape[1]}, {args.env_id} has {obs_dim}/{act_dim}: demos of another task?")
    low = envs.single_action_space.low.astype(np.float32)
    high = envs.single_action_space.high.astype(np.float32)

    # ALGO LOGIC: networks: a tanh-Gaussian actor over [-1, 1]^A, an ensemble of critics and their targets
    actor = ResidualActor(obs_dim, act_dim, hidden=args.hidden_dim).to(device)
    critics = [SoftQNetwork(obs_dim, act_dim, args.hidden_dim, args.critic_layer_norm).to(device)
               for _ in range(args.num_qs)]
    targets = [SoftQNetwork(obs_dim, act_dim, args.hidden_dim, args.critic_layer_norm).to(device)
               for _ in range(args.num_qs)]
    for q, t in zip(critics, targets):
        t.load_state_dict(q.state_dict())
    q_optimizer = torch.optim.Adam([p for q in critics for p in q.parameters()], lr=args.q_lr)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr)
    log_temp = torch.tensor([np.log(args.init_temperature)], device=device, requires_grad=True)
    temp_optimizer = torch.optim.Adam([log_temp], lr=args.q_lr)
    target_entropy = -act_dim / 2

    online = ReplayBuffer(min(args.buffer_size or args.total_timesteps, args.total_timesteps), obs_dim, act_dim,
                          False, device)
    offline = ReplayBuffer(len(demos["reward"]), obs_dim, act_dim, False, device)
    offline.add(*(torch.as_tensor(demos[k], device=device) for k in ("obs", "next_obs")),
                torch.as_tensor(to_unit(demos["action"], low, high), device=device), None, None,
                torch.as_tensor(demos["reward"], device=device), torch.as_tensor(demos["stop"], device=device))
    n_demo = int(round(args.batch_size * args.demo_ratio))

    def sample():  # ALGO LOGIC: symmetric sampling, demonstrations and online data in one batch
        a, b = offline.sample(n_demo), online.sample(args.batch_size - n_demo)
        return tuple(torch.cat([x, y]) for x, y in zip(a, b))

    def act(obs):  # deterministic: the evaluations' policy
        with torch.no_grad():
            a = actor.get_eval_action(obs_tensor(obs, device)[:, -1]).cpu().numpy()
        return from_unit(a, low, high)[:, None]

    def evaluate() -> dict:
        actor.eval()
        result = run_episodes(args.num_eval_episodes, act, eval_envs)
        actor.train()
        return result

    def checkpoint() -> Path:
        return run.save({"actor": actor.state_dict(), "critics": [q.state_dict() for q in critics],
                         "log_temperature": log_temp.detach().clone(), "global_step": global_step,
                         "args": dataclasses.asdict(args)}, str(global_step))

    global_step = updates = 0
    updates_per_round = int(args.training_freq * args.utd)
    actor_every = max(1, int(args.utd))
    collect_threads, update_threads = torch.get_num_threads(), args.update_threads or os.cpu_count() or 1
    train_stats, losses, timer = defaultdict(list), {}, StepTimer()
    start_time = time.time()
    obs, _ = envs.reset(seed=args.seed)
    progress = tqdm(total=args.total_timesteps, desc=ALGO_NAME, unit="step", dynamic_ncols=True)
    while global_step < args.total_timesteps:
        for _ in range(args.training_freq // args.num_envs):
            global_step += args.num_envs
            obs_last = obs_tensor(obs, device)[:, -1]
            if global_step <= args.learning_starts:
                a = torch.rand(args.num_envs, act_dim, device=device) * 2 - 1
            else:
                with torch.no_grad():
                    a, _, _ = actor.get_action(obs_last)
            a_np = a.cpu().numpy()
            next_obs, reward, terminated, truncated, infos = envs.step(from_unit(a_np, low, high)[:, None])
            for info in finished_episodes(infos):
                train_stats["return"].append(float(np.ravel(info["episode"]["r"])[0]))
                train_stats["len"].append(int(np.ravel(info["episode"]["l"])[0]))
                train_stats["success"].append(float(info["success"]))
            stop, need_final = bootstrap_masks(terminated, truncated, args.bootstrap_at_done)
            real_next = obs_tensor(next_obs, device)[:, -1].clone()
            for i in np.flatnonzero(need_final):  # a time-out: bootstrap from the observation before the reset
                real_next[i] = torch.as_tensor(infos["final_observation"][i][-1], device=device)
            online.add(obs_last, real_next, a, None, None,
                       torch.as_tensor(reward - 1.0, dtype=torch.float32, device=device),  # success - 1
                       torch.as_tensor(stop, dtype=torch.float32, device=device))
            obs = next_obs
            timer.lap("collect")
        progress.update(args.training_freq)

        if global_step > args.learning_starts:
            torch.set_num_threads(update_threads)
            for _ in range(updates_per_round):
                updates += 1
                batch = sample()
                losses |= critic_update(args, batch, actor, critics, targets, q_optimizer, log_temp)
                if updates % actor_every == 0:  # RLPD: one actor step after each block of utd critic steps
                    losses |= actor_update(batch[0], actor, critics, actor_optimizer, log_temp, temp_optimizer,
                                           target_entropy)
            torch.set_num_threads(collect_threads)
            timer.lap("update")

        if crossed(global_step, args.training_freq, args.log_freq):
            scalars = {f"train/{k}": np.mean(v) for k, v in train_stats.items()}
            train_stats = defaultdict(list)
            scalars |= {"time/updates": updates, "time/env_steps": global_step,
                        "time/SPS": global_step / (time.time() - start_time), **timer.scalars("time/seconds_")}
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


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
