"""Behavior Transformer: a minGPT over the observation window, a head giving, per step, K cluster
logits and K action offsets; actions are cluster centre + offset. Parameter names match the official
Policy Decorator checkpoints (`net._gpt_model.*`, `net._map_to_cbet_preds.0.*`, `net._cluster_centers`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        assert n_embd % n_head == 0
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        # Saved in checkpoints (the official ones have it), so a buffer, not recomputed.
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for z in self.c_attn(x).split(C, dim=2))  # (B, heads, T, head_dim)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd: int, dropout: float):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, block_size, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """minGPT on continuous inputs: a Linear token embedding instead of a lookup table."""

    def __init__(self, input_dim: int, output_dim: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                 dropout: float = 0.1):
        super().__init__()
        self.block_size = block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Linear(input_dim, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            drop=nn.Dropout(dropout),
            h=nn.ModuleList([Block(n_embd, n_head, block_size, dropout) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, output_dim, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.zeros_(module.bias)
            nn.init.ones_(module.weight)

    def forward(self, x):  # (B, T, input_dim) -> (B, T, output_dim)
        T = x.shape[1]
        assert T <= self.block_size, f"sequence of {T} > block size {self.block_size}"
        pos = torch.arange(T, device=x.device)
        h = self.transformer.drop(self.transformer.wte(x) + self.transformer.wpe(pos)[None])
        for block in self.transformer.h:
            h = block(h)
        return self.lm_head(self.transformer.ln_f(h))


def kmeans(x: torch.Tensor, k: int, iters: int = 50) -> torch.Tensor:
    """Cluster centres of x (N, D): k random points, then Lloyd iterations; empty clusters re-seeded."""
    n = x.shape[0]
    centers = x[torch.randperm(n, device=x.device)[:k]]
    for _ in range(iters):
        assign = torch.cdist(x, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)[:, None]
        centers = sums / counts  # empty clusters give nan
        dead = torch.isnan(centers).any(dim=1)
        if dead.any():
            centers[dead] = x[torch.randperm(n, device=x.device)[: int(dead.sum())]]
    return centers


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean over samples of -(1 - p_t)^gamma log p_t."""
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp.exp()) ** gamma * logp).mean()


class BehaviorTransformer(nn.Module):
    def __init__(self, act_dim: int, gpt_model: GPT, n_clusters: int, offset_loss_multiplier: float = 1e3,
                 gamma: float = 2.0):
        super().__init__()
        self._act_dim, self._K = act_dim, n_clusters
        self._gpt_model = gpt_model
        gpt_out = gpt_model.lm_head.out_features
        # A Sequential of one Linear, as the official checkpoints name it ("_map_to_cbet_preds.0").
        self._map_to_cbet_preds = nn.Sequential(nn.Linear(gpt_out, (act_dim + 1) * n_clusters))
        self.register_buffer("_cluster_centers", torch.zeros(n_clusters, act_dim))
        self.offset_loss_multiplier, self.gamma = offset_loss_multiplier, gamma

    def fit_clusters(self, actions: torch.Tensor, iters: int = 50) -> None:
        self._cluster_centers = kmeans(actions, self._K, iters).float()

    def _heads(self, obs_seq):
        preds = self._map_to_cbet_preds(self._gpt_model(obs_seq))
        logits, offsets = preds.split([self._K, self._K * self._act_dim], dim=-1)
        return logits, offsets.unflatten(-1, (self._K, self._act_dim))  # (B, T, K), (B, T, K, A)

    def loss(self, obs_seq: torch.Tensor, act_seq: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Focal loss on the nearest cluster of each true action + multiplier * MSE of that cluster's offset."""
        logits, offsets = self._heads(obs_seq)
        B, T, K = logits.shape
        # nearest cluster per (b, t): (B, T)
        target = ((act_seq[:, :, None, :] - self._cluster_centers) ** 2).sum(-1).argmin(-1)
        pred_offset = offsets.gather(2, target[..., None, None].expand(B, T, 1, self._act_dim)).squeeze(2)
        true_offset = act_seq - self._cluster_centers[target]
        offset_loss = F.mse_loss(pred_offset, true_offset)
        cls_loss = focal_loss(logits.reshape(B * T, K), target.reshape(B * T), self.gamma)
        total = cls_loss + self.offset_loss_multiplier * offset_loss
        stats = {"classification_loss": cls_loss.detach(), "offset_loss": offset_loss.detach(),
                 "total_loss": total.detach(),
                 "cls_accuracy": (logits[:, -1].argmax(-1) == target[:, -1]).float().mean().detach()}
        return total, stats

    def act(self, obs_seq: torch.Tensor) -> torch.Tensor:
        """Arg-max cluster centre + its offset, at every step: (B, T, act_dim)."""
        logits, offsets = self._heads(obs_seq)
        best = logits.argmax(-1)  # (B, T)
        off = offsets.gather(2, best[..., None, None].expand(*best.shape, 1, self._act_dim)).squeeze(2)
        return self._cluster_centers[best] + off
