"""A base policy of your own, refined by Policy Decorator with no change to pi-dec.

An action-chunking MLP trained by behaviour cloning (not one of pi-dec's bases): it reads the last two
observations and outputs the next four actions. Train it on the Adroit Door demos, then refine it:

    python examples/mlp_base.py --demo-path data/AdroitHandDoorSparse/trajectory.h5 --out output/mlp_base.pt
    python online/pi_dec_diffusion_maniskill2.py --env-id AdroitHandDoorSparse-v1 \
        --base-policy examples.mlp_base:load --base-policy-ckpt output/mlp_base.pt

`--base-policy module:attribute` names `load` below: called with the checkpoint path, it returns an object
with the attributes and methods of pi_dec.frozen_base.FrozenBase. Nothing else of pi-dec is needed.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn


class MLPBase(nn.Module):
    """obs window (N, 2, obs_dim) -> chunk (N, 4, act_dim) in [-1, 1]."""

    obs_mode, control_mode, image_size = "state", None, None  # state vectors, the task's default controller
    obs_horizon, act_horizon = 2, 4

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.obs_dim, self.act_dim, self.res_obs_dim = obs_dim, act_dim, obs_dim  # the residual sees the last obs
        self.config = {"obs_dim": obs_dim, "act_dim": act_dim, "hidden": hidden}
        self.net = nn.Sequential(nn.Linear(2 * obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 4 * act_dim), nn.Tanh())

    def forward(self, obs_seq: torch.Tensor) -> torch.Tensor:
        return self.net(obs_seq.flatten(1)).view(-1, self.act_horizon, self.act_dim)

    @torch.no_grad()
    def act(self, obs_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(obs_seq), obs_seq[:, -1]

    def reset(self, done) -> None:
        pass  # no per-episode state


def load(ckpt_path: str) -> MLPBase:
    """The factory `--base-policy examples.mlp_base:load` names."""
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    policy = MLPBase(**saved["config"])
    policy.load_state_dict(saved["state_dict"])
    return policy.eval().requires_grad_(False)


def windows(trajs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's (two observations, next four actions); the first observation and the last action repeat at
    the ends, as the env's observation window does at a reset."""
    obs_seqs, act_seqs = [], []
    for traj in trajs:
        obs, act = traj["obs"][:-1], traj["actions"]
        obs = np.concatenate([obs[:1], obs])  # (L + 1, D): obs[t] and obs[t + 1] are the window ending at step t
        act = np.concatenate([act, np.repeat(act[-1:], 3, axis=0)])
        for t in range(len(traj["actions"])):
            obs_seqs.append(obs[t:t + 2])
            act_seqs.append(act[t:t + 4])
    return torch.as_tensor(np.array(obs_seqs)), torch.as_tensor(np.array(act_seqs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Train the MLP base by behaviour cloning.")
    parser.add_argument("--demo-path", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--iters", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from pi_dec.demo_data import load_demos  # reading the demo files; the policy itself needs no pi-dec

    torch.manual_seed(args.seed)
    obs_seq, act_seq = windows(load_demos(args.demo_path))
    policy = MLPBase(obs_seq.shape[-1], act_seq.shape[-1])
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for i in range(args.iters):
        idx = torch.randint(len(obs_seq), (256,))
        loss = nn.functional.mse_loss(policy(obs_seq[idx]), act_seq[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i % 1000 == 0 or i == args.iters - 1:
            print(f"iteration {i}: loss {loss.item():.4f}")
    torch.save({"state_dict": policy.state_dict(), "config": policy.config}, args.out)
    print(f"saved {args.out}")
