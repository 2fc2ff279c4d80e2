"""Train a Behavior Transformer (k-means action bins + offsets, minGPT) on ManiSkill2 demonstrations.

    python offline/bet_maniskill2.py --env-id StackCube-v0 --demo-path data/StackCube/trajectory.h5 \
        --control-mode pd_ee_delta_pos --batch-size 4096 --lr 0.001

The policy sees the last `context_window` observations and outputs one action: the centre of the most
likely action cluster plus that cluster's predicted offset. Writes output/<env_id>/Offline-BeT/<run>/
with args.json, tensorboard logs and checkpoints/{best,<iter>}.pt ({'agent': state dict}).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import tyro
from tqdm import tqdm

import pi_dec  # noqa: F401  (Vulkan set-up before ManiSkill2)
from pi_dec.base_policies import BET_ALGO, BeTPolicy
from pi_dec.demo_data import random_batches
from pi_dec.make_env import check_env
from pi_dec.suites import suite_for
from pi_dec.run import (COUNT, OFFLINE_RULES, Run, RunArgs, StepTimer, UsageError, at_least, check_eval_episodes,
                        check_numbers, offline_eval_envs, run_episodes, setup_torch, user_errors)


@dataclass
class Args(RunArgs):
    env_id: str = "TurnFaucet-v2"
    """the task"""
    demo_path: str = "data/TurnFaucet/trajectory.h5"
    """demonstrations (ManiSkill2 trajectory .h5 with its .json; for Adroit also a Minari dataset folder)"""
    num_demo_traj: int | None = None
    """use the first N trajectories (all by default)"""
    total_iters: int = 200_000
    """training iterations"""
    batch_size: int = 2048
    """batch size (little gain beyond 2048)"""

    lr: float = 1e-4
    """learning rate (tune together with the batch size)"""
    context_window: int = 20
    """observations the transformer sees (important)"""
    n_clusters: int = 8
    """k-means action clusters (very important)"""
    n_layers: int = 4
    """transformer layers"""
    n_heads: int = 4
    """attention heads"""
    n_embedding: int = 128
    """transformer width"""
    weight_decay: float = 2e-4
    """AdamW weight decay of the transformer's Linear weights"""

    log_freq: int = 1000
    """log losses every N iterations"""
    eval_freq: int = 5000
    """evaluate every N iterations"""
    save_freq: int | None = 20_000
    """save a checkpoint every N iterations (None: never)"""
    num_eval_episodes: int = 100
    """episodes per evaluation"""
    num_eval_envs: int = 10
    """parallel evaluation envs (too many biases towards short episodes)"""
    control_mode: str | None = None
    """control mode; must match the demonstrations (default: pd_ee_delta_pose on ManiSkill2 tasks, Adroit's
    only mode pd_joint_pos on Adroit tasks)"""


# What each numeric flag allows; check_args adds the combinations (main checks --n-clusters against the demos).
RULES = OFFLINE_RULES | {"context_window": COUNT, "n_clusters": COUNT, "n_layers": COUNT, "n_heads": COUNT,
                         "n_embedding": COUNT, "weight_decay": at_least(0)}


def check_args(args: Args) -> None:
    check_numbers(args, RULES)
    check_eval_episodes(args)
    if args.n_embedding % args.n_heads:  # each head gets an equal slice of the width
        raise UsageError(f"--n-embedding {args.n_embedding}: must be a multiple of --n-heads ({args.n_heads}).")


# ------------------------------------------------------------------------------------------------ #
# Data: windows of `context_window` consecutive (observation, action) pairs
# ------------------------------------------------------------------------------------------------ #
class WindowDataset:
    """Window starts 0 .. L-context_window-1 of each trajectory, gathered by indexing one tensor.

    NOTE(original): the last possible window of each trajectory (start L - context_window) is not
    used, and trajectories shorter than the window are skipped.
    """

    def __init__(self, trajs: list[dict], context_window: int, device):
        self.window = context_window
        obs_chunks, act_chunks, starts = [], [], []
        offset = skipped = 0
        for i, traj in enumerate(trajs):
            L = len(traj["actions"])
            if L < context_window:
                print(f"Skipped trajectory #{i}: {L} steps < context window {context_window}")
                skipped += 1
                continue
            obs_chunks.append(torch.as_tensor(traj["obs"][:L]))  # the final observation has no action
            act_chunks.append(torch.as_tensor(traj["actions"]))
            starts.append(offset + torch.arange(L - context_window))
            offset += L
        if skipped:
            print(f"Skipped {skipped} of {len(trajs)} trajectories; a context window <= "
                  f"{min(len(t['actions']) for t in trajs)} would use them all.")
        if not starts:
            raise UsageError(f"No trajectory is longer than the context window ({context_window}).")
        self.obs = torch.cat(obs_chunks).to(device)  # (transitions, obs_dim)
        self.act = torch.cat(act_chunks).to(device)  # (transitions, act_dim)
        self.start = torch.cat(starts).to(device)

    def __len__(self) -> int:
        return len(self.start)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs_seq (B, context_window, obs_dim), act_seq (B, context_window, act_dim)."""
        steps = self.start[idx, None] + torch.arange(self.window, device=idx.device)
        return self.obs[steps], self.act[steps]


def all_actions(trajs: list[dict]) -> torch.Tensor:
    """What k-means clusters: the actions of every trajectory.

    NOTE(original): trajectories shorter than the context window, which train nothing, still count here.
    """
    return torch.cat([torch.as_tensor(t["actions"]) for t in trajs])


def make_optimizer(policy: BeTPolicy, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999): the transformer's Linear weights decay; its biases, LayerNorms and
    embeddings do not.

    NOTE(original): the head (`_map_to_cbet_preds`) is added as a separate group without a weight decay
    setting, so it gets AdamW's default of 0.01 (weight and bias); kept as in the released models.
    """
    decay, no_decay = [], []
    for module in policy.net._gpt_model.modules():
        for name, p in module.named_parameters(recurse=False):
            (decay if name == "weight" and isinstance(module, torch.nn.Linear) else no_decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), fused=True)
    optimizer.add_param_group({"params": list(policy.net._map_to_cbet_preds.parameters())})
    return optimizer


# ------------------------------------------------------------------------------------------------ #
def main(args: Args) -> Run:
    check_args(args)
    suite = suite_for(args.env_id)  # ManiSkill2 or Adroit: env construction, control modes, demo files
    args.control_mode = suite.control_mode(args.control_mode)
    env_kwargs = suite.env_kwargs(args.obj_ids, args.asset_root, args.model_json)
    check_env(args.env_id, env_kwargs)
    device = setup_torch(args.seed, args.cuda, args.num_threads, args.torch_deterministic)
    trajs = suite.load_demos(args.demo_path, args.env_id, args.control_mode, args.num_demo_traj)
    actions = all_actions(trajs)  # what k-means clusters
    if len(actions) < args.n_clusters:
        raise UsageError(f"--n-clusters {args.n_clusters}: must be at most the {len(actions)} demonstrated actions.")
    data = WindowDataset(trajs, args.context_window, device)
    obs_dim, act_dim = data.obs.shape[1], data.act.shape[1]
    print(f"{len(trajs)} demos, {len(data.obs)} transitions, {len(data)} windows")

    run = Run(args, BET_ALGO, __file__)
    agent = BeTPolicy(obs_dim, act_dim, args.context_window, args.n_clusters, args.n_layers, args.n_heads,
                      args.n_embedding).to(device)
    optimizer = make_optimizer(agent, args.lr, args.weight_decay)
    agent.net.fit_clusters(actions.to(device), iters=50)

    eval_envs = offline_eval_envs(args, args.context_window, obs_dim, act_dim, run, env_kwargs, act_chunks=False)

    def evaluate() -> dict:
        # NOTE(original): evaluated with dropout on (the upstream's agent.eval() is commented out: "performs
        # worse"), which is also how the frozen BeT acts online, so best.pt is chosen for the policy that runs there.
        act = lambda obs: agent.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()  # noqa: E731
        return run_episodes(args.num_eval_episodes, act, eval_envs)

    # ---------------------------------------------------------------------------------------- #
    # ALGO LOGIC: focal loss on the nearest cluster + 1000 x MSE of its offset, every window step
    # ---------------------------------------------------------------------------------------- #
    timer = StepTimer()
    agent.train()
    progress = tqdm(range(1, args.total_iters + 1), desc="BeT", dynamic_ncols=True)
    for it, idx in zip(progress, random_batches(len(data), args.batch_size, device)):
        obs_seq, act_seq = data.batch(idx)
        loss, stats = agent.compute_loss(obs_seq, act_seq)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timer.lap("update")

        if it % args.log_freq == 0:
            stats = {k: v.item() for k, v in stats.items()}  # host sync only when logging
            progress.set_postfix(loss=f"{stats['total_loss']:.4f}")
            run.log({**{f"losses/{k}": v for k, v in stats.items()},
                     "charts/learning_rate": optimizer.param_groups[0]["lr"],
                     "time/wall_seconds": time.time() - run.start_time, **timer.scalars()}, it)
        if eval_envs is not None and it % args.eval_freq == 0:
            if run.record_eval(evaluate(), it):
                run.save({"agent": agent.state_dict()}, "best")
            timer.lap("eval")
        if args.save_freq and it % args.save_freq == 0:
            run.save({"agent": agent.state_dict()}, str(it))
    if eval_envs is None:  # never evaluated: the final weights are the best we know
        run.save({"agent": agent.state_dict()}, "best")
    else:
        eval_envs.close()
    run.close()
    return run


if __name__ == "__main__":
    with user_errors():
        main(tyro.cli(Args, description=__doc__))
