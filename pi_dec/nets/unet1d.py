"""1-D conditional U-Net over action sequences (the Diffusion Policy "colab" variant).

The action sequence (B, T, act_dim) is treated as act_dim channels over T time steps. Every residual
block is FiLM-conditioned on [diffusion-step embedding, flattened observation window]. Module and
parameter names match the official Policy Decorator checkpoints.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        angles = t[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x):
        return self.block(x)


class Downsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x):
        return self.conv(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two conv blocks; the condition predicts a per-channel scale and bias (FiLM) applied in between."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int = 3, n_groups: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList([
            Conv1dBlock(in_channels, out_channels, kernel_size, n_groups),
            Conv1dBlock(out_channels, out_channels, kernel_size, n_groups),
        ])
        self.out_channels = out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_channels), nn.Unflatten(-1, (-1, 1)))
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # x: (B, in_channels, T), cond: (B, cond_dim)
        out = self.blocks[0](x)
        film = self.cond_encoder(cond).reshape(x.shape[0], 2, self.out_channels, 1)
        out = film[:, 0] * out + film[:, 1]
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    def __init__(self, input_dim: int, global_cond_dim: int, diffusion_step_embed_dim: int = 256,
                 down_dims=(256, 512, 1024), kernel_size: int = 5, n_groups: int = 8):
        super().__init__()
        dims = [input_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:]))
        dsed = diffusion_step_embed_dim
        cond_dim = dsed + global_cond_dim

        def block(cin, cout):
            return ConditionalResidualBlock1D(cin, cout, cond_dim, kernel_size, n_groups)

        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed), nn.Linear(dsed, dsed * 4), nn.Mish(), nn.Linear(dsed * 4, dsed))
        self.down_modules = nn.ModuleList([
            nn.ModuleList([block(cin, cout), block(cout, cout),
                           Downsample1d(cout) if i < len(in_out) - 1 else nn.Identity()])
            for i, (cin, cout) in enumerate(in_out)
        ])
        self.mid_modules = nn.ModuleList([block(dims[-1], dims[-1]), block(dims[-1], dims[-1])])
        # NOTE(original): every up level upsamples (the "is last" test never fires for the reversed list);
        # kept, since the released checkpoints have these weights.
        self.up_modules = nn.ModuleList([
            nn.ModuleList([block(cout * 2, cin), block(cin, cin), Upsample1d(cin)])
            for cin, cout in reversed(in_out[1:])
        ])
        # NOTE(original): the final block uses 8 groups whatever n_groups is.
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size=kernel_size),
            nn.Conv1d(down_dims[0], input_dim, 1),
        )

    def forward(self, sample: torch.Tensor, timestep, global_cond: torch.Tensor) -> torch.Tensor:
        # sample: (B, T, input_dim); timestep: (B,) or scalar; global_cond: (B, global_cond_dim)
        x = sample.moveaxis(-1, -2)
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        cond = torch.cat([self.diffusion_step_encoder(t), global_cond], dim=-1)
        skips = []
        for res1, res2, down in self.down_modules:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = down(x)
        for mid in self.mid_modules:
            x = mid(x, cond)
        for res1, res2, up in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, cond), cond))
        return self.final_conv(x).moveaxis(-1, -2)
