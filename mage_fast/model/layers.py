"""Modules over the fused ops (the "module" layer: ops ← here ← model).

Parameters that an op reads are owned by the module that calls the op, so ZeRO-3's per-module
gather sees them (a parent reaching into a child's `.weight` would read an empty partition).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mage_fast.ops import ian_projection, patch_pool


class IANProjection(nn.Module):
    """Vector alignment block: y = LN(GELU(x W1ᵀ + b1) W2ᵀ + b2).  x (..., C) → y (..., D)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        self.eps, self.backend = eps, backend
        self.w1 = nn.Parameter(torch.empty(out_dim, in_dim))
        self.b1 = nn.Parameter(torch.empty(out_dim))
        self.w2 = nn.Parameter(torch.empty(out_dim, out_dim))
        self.b2 = nn.Parameter(torch.empty(out_dim))
        self.ln_w = nn.Parameter(torch.ones(out_dim))
        self.ln_b = nn.Parameter(torch.zeros(out_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init, so ablations against mlp2x_gelu start alike.
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            bound = 1 / math.sqrt(w.shape[1])
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ian_projection(
            x, self.w1, self.b1, self.w2, self.b2, self.ln_w, self.ln_b, eps=self.eps, backend=self.backend
        )


class PatchPool(nn.Module):
    """Average k×k cells of a g×g token grid in token layout: (B, g·g, C) → (B, ⌈g/k⌉², C)."""

    def __init__(self, grid: int, k: int, backend: str = "auto") -> None:
        super().__init__()
        self.grid, self.k, self.backend = grid, k, backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_pool(x, (self.grid, self.grid), k=self.k, backend=self.backend)


class CrossAttention(nn.Module):
    """Multi-head cross-attention q (B, Nq, D) over kv (B, Nk, D); out-projection zero-initialised."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"aligner width {dim} is not divisible by num_heads {num_heads}")
        self.h = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        qh = self.q(q).view(b, nq, self.h, d // self.h).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qh, k, v)
        return self.out(o.transpose(1, 2).reshape(b, nq, d))


class MLP(nn.Module):
    """Linear → GELU → Linear, (…, D) → (…, D_out); optionally zero-initialised last layer."""

    def __init__(self, dim: int, hidden: int, out: int, zero_last: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)
        if zero_last:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
