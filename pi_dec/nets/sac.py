"""SAC networks for the residual policy: a squashed-Gaussian actor and a Q-network (3 hidden ReLU layers,
256 wide as in the original; `hidden` makes them narrower for CPU budgets). Parameter names follow the
original Policy Decorator online checkpoints (without `layer_norm`, which the original does not have)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

LOG_STD_MAX = 2.0


def layer_init(layer: nn.Linear, std: float = np.sqrt(2), bias_const: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias_const)
    return layer


def mlp(in_dim: int, hidden: int = 256, layer_norm: bool = False) -> list[nn.Module]:
    """Three hidden layers: Linear -> [LayerNorm] -> ReLU."""
    layers: list[nn.Module] = []
    for d_in in (in_dim, hidden, hidden):
        layers += [nn.Linear(d_in, hidden), *([nn.LayerNorm(hidden)] if layer_norm else []), nn.ReLU()]
    return layers


class SoftQNetwork(nn.Module):
    """Q(obs, action). `layer_norm` normalizes each hidden layer (not in the original): the features then
    have a fixed norm, so Q cannot grow without bound on rarely visited states (README, "Quickstart")."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layer_norm: bool = False):
        super().__init__()
        self.net = nn.Sequential(*mlp(obs_dim + act_dim, hidden, layer_norm),
                                 layer_init(nn.Linear(hidden, 1), std=0.01))

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:  # -> (B, 1)
        return self.net(torch.cat([obs, act], dim=1))


class ResidualActor(nn.Module):
    """tanh-squashed Gaussian over the residual in [-1, 1]^act_dim."""

    def __init__(self, in_dim: int, act_dim: int, log_std_min: float = -20.0, hidden: int = 256):
        super().__init__()
        self.log_std_min = log_std_min
        self.backbone = nn.Sequential(*mlp(in_dim, hidden))
        self.fc_mean = layer_init(nn.Linear(hidden, act_dim), std=0.01)
        self.fc_logstd = layer_init(nn.Linear(hidden, act_dim), std=0.01)
        # The residual space is [-1, 1]: scale 1, bias 0 (kept as buffers, as the original saves them).
        self.register_buffer("action_scale", torch.ones(act_dim))
        self.register_buffer("action_bias", torch.zeros(act_dim))

    def forward(self, x):
        h = self.backbone(x)
        log_std = torch.tanh(self.fc_logstd(h))  # mapped into [log_std_min, LOG_STD_MAX]
        log_std = self.log_std_min + 0.5 * (LOG_STD_MAX - self.log_std_min) * (log_std + 1)
        return self.fc_mean(h), log_std

    def get_action(self, x):
        """A reparameterized sample, its log-probability (B, 1), and the deterministic action."""
        mean, log_std = self(x)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t) - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        return action, log_prob.sum(1, keepdim=True), torch.tanh(mean) * self.action_scale + self.action_bias

    def get_eval_action(self, x):
        return torch.tanh(self.fc_mean(self.backbone(x))) * self.action_scale + self.action_bias


def from_unit(action, low, high):
    """The actor's [-1, 1] -> an action space [low, high] (a baseline acting without a base, RLPD)."""
    return low + (action + 1) / 2 * (high - low)


def to_unit(action, low, high):
    """An action space [low, high] -> the actor's [-1, 1] (demo actions for RLPD's buffer)."""
    return 2 * (action - low) / (high - low) - 1


def xavier_init_(*modules: nn.Module) -> None:
    """Every Linear xavier-uniform with zero bias (what the original does for ManiSkill1-style envs)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, gain=1)
                nn.init.zeros_(m.bias)
