"""Aligners from one registry: ian (MAGE), mlp2x_gelu (LLaVA-1.5), linear, pool_mlp.

All map vision features V (B_img, g·g, C) to visual tokens Z (B_img, T, D) in the LLM's
embedding space; T = `num_tokens(cfg, g)`. A new aligner is one `ALIGNERS` entry: its builder
and its token count; `model.aligner.type` names the entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.layers import MLP, CrossAttention, IANProjection, PatchPool


class IANAligner(nn.Module):
    """MAGE's Intelligent Alignment Network.

    a = LN(W2 GELU(W1 V))                 vector alignment block, every patch     (B, g·g, D)
    b = LN(Wp PatchPool_k(V))             local pooled patch features             (B, T, D)
    h = b + CrossAttn(q=LN(b), kv=LN(a))  semantic enhancement block: each local query
    Z = h + MLP(LN(h))                    gathers global aligned semantics        (B, T, D)
    The out-projection of CrossAttn and the last MLP layer are zero-initialised, so Z = b at step 0.
    With `pos_embed`, a learned (T, D) embedding of each token's grid cell is added to Z (zero at init).
    """

    def __init__(self, cfg: AlignerConfig, in_dim: int, out_dim: int, grid: int, kernels: KernelConfig):
        super().__init__()
        self.vab = IANProjection(in_dim, out_dim, backend=kernels.ian_projection)
        self.pool = PatchPool(grid, cfg.pool_k, backend=kernels.patch_pool)
        self.pool_proj = nn.Linear(in_dim, out_dim)
        self.pool_norm = nn.LayerNorm(out_dim)
        self.norm_q = nn.LayerNorm(out_dim)
        self.norm_kv = nn.LayerNorm(out_dim)
        self.attn = CrossAttention(out_dim, cfg.num_heads)
        self.norm_mlp = nn.LayerNorm(out_dim)
        self.mlp = MLP(out_dim, int(cfg.mlp_ratio * out_dim), out_dim, zero_last=True)
        self.pos = nn.Parameter(torch.zeros(pooled_tokens(cfg, grid), out_dim)) if cfg.pos_embed else None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        a = self.vab(v)
        b = self.pool_norm(self.pool_proj(self.pool(v)))
        h = b + self.attn(self.norm_q(b), self.norm_kv(a))
        z = h + self.mlp(self.norm_mlp(h))
        return z if self.pos is None else z + self.pos.to(z.dtype)


class PoolMLPAligner(nn.Module):
    """Patch pool then LLaVA's 2-layer GELU MLP: (B, g·g, C) → (B, ⌈g/k⌉², D)."""

    def __init__(self, cfg: AlignerConfig, in_dim: int, out_dim: int, grid: int, kernels: KernelConfig):
        super().__init__()
        self.pool = PatchPool(grid, cfg.pool_k, backend=kernels.patch_pool)
        self.mlp = MLP(in_dim, out_dim, out_dim)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(v))


def pooled_tokens(cfg: AlignerConfig, grid: int) -> int:
    """⌈g/k⌉² tokens: one per pooled k×k patch cell."""
    return math.ceil(grid / cfg.pool_k) ** 2


def patch_tokens(cfg: AlignerConfig, grid: int) -> int:
    """g·g tokens: one per patch."""
    return grid * grid


Builder = Callable[[AlignerConfig, int, int, int, KernelConfig], nn.Module]


class Aligner(NamedTuple):
    """A registry entry: build(cfg, in_dim, out_dim, grid, kernels), and T for a g×g grid."""

    build: Builder
    num_tokens: Callable[[AlignerConfig, int], int]


ALIGNERS: dict[str, Aligner] = {
    "ian": Aligner(IANAligner, pooled_tokens),
    "pool_mlp": Aligner(PoolMLPAligner, pooled_tokens),
    "mlp2x_gelu": Aligner(lambda cfg, i, o, g, k: MLP(i, o, o), patch_tokens),
    "linear": Aligner(lambda cfg, i, o, g, k: nn.Linear(i, o), patch_tokens),
}


def _entry(cfg: AlignerConfig) -> Aligner:
    if cfg.type not in ALIGNERS:
        raise ValueError(f"model.aligner.type must be one of {tuple(ALIGNERS)}, got {cfg.type!r}")
    return ALIGNERS[cfg.type]


def num_tokens(cfg: AlignerConfig, grid: int) -> int:
    """Visual tokens per image for a g×g patch grid."""
    return _entry(cfg).num_tokens(cfg, grid)


def build_aligner(cfg: AlignerConfig, in_dim: int, out_dim: int, grid: int, kernels: KernelConfig) -> nn.Module:
    """The one factory: `model.aligner.type` switches the ablation."""
    return _entry(cfg).build(cfg, in_dim, out_dim, grid, kernels)
