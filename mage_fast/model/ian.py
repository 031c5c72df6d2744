"""The pooling aligners: MAGE's Intelligent Alignment Network (ian) and pool_mlp, built from
:mod:`mage_fast.model.aligner`'s registry (sam builds on ian: :mod:`mage_fast.model.sam`)."""

from __future__ import annotations

import torch
from torch import nn

from mage_fast.model.aligner_tokens import pooled_tokens
from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.layers import MLP, CrossAttention, IANProjection, PatchPool


def cell_embedding(tokens: int, dim: int, std: float) -> torch.Tensor:
    """The initial (tokens, dim) grid-cell embedding: N(0, std²) from torch's global generator
    (seeded per run, the same on every rank), or zeros when std is 0."""
    return torch.randn(tokens, dim) * std if std > 0 else torch.zeros(tokens, dim)


class IANAligner(nn.Module):
    """MAGE's Intelligent Alignment Network.

    a = LN(W2 GELU(W1 V))                 vector alignment block, every patch     (B, g·g, D)
    b = LN(Wp PatchPool_k(V))             local pooled patch features             (B, T, D)
    h = b + CrossAttn(q=LN(b), kv=LN(a))  semantic enhancement block: each local query
    Z = h + MLP(LN(h))                    gathers global aligned semantics        (B, T, D)
    The out-projection of CrossAttn and the last MLP layer are zero-initialised, so Z = b at step 0.
    With `pos_embed`, a learned (T, D) embedding of each token's grid cell is added to Z, drawn from
    N(0, pos_init_std²) at init (0: zeros).
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
        self.pos = (
            nn.Parameter(cell_embedding(pooled_tokens(cfg, grid), out_dim, cfg.pos_init_std)) if cfg.pos_embed else None
        )

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
