"""The aligners of a mage-fast model in plain torch (no custom ops): V (N, g·g, C) → Z (N, T, D).

Parameter names equal mage-fast's (its export folder's aligner/model.safetensors), so the weights
load as they are. ian: a = LN(W2 GELU(W1 V)); b = LN(Wp PatchPool_k(V)); h = b + CrossAttn(LN(b),
LN(a)); Z = h + MLP(LN(h)) (+ pos). sam adds, for a sample of >= 2 images, a context
V_ctx = Σ_j softmax_j(score(V_j)) V_j through the same blocks and guidance P21(c_i) into Z_i.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class IANProjection(nn.Module):
    """y = LN(GELU_erf(x W1ᵀ + b1) W2ᵀ + b2): (..., C) → (..., D)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w1 = nn.Parameter(torch.empty(out_dim, in_dim))
        self.b1 = nn.Parameter(torch.zeros(out_dim))
        self.w2 = nn.Parameter(torch.empty(out_dim, out_dim))
        self.b2 = nn.Parameter(torch.zeros(out_dim))
        self.ln_w = nn.Parameter(torch.ones(out_dim))
        self.ln_b = nn.Parameter(torch.zeros(out_dim))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.w2, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(F.linear(x, self.w1, self.b1))
        return F.layer_norm(F.linear(h, self.w2, self.b2), (self.w2.shape[0],), self.ln_w, self.ln_b, self.eps)


class PatchPool(nn.Module):
    """Mean of each k×k cell of a g×g token grid (edge cells: the cells that exist):
    (B, g·g, C) → (B, ⌈g/k⌉², C)."""

    def __init__(self, grid: int, k: int):
        super().__init__()
        self.grid, self.k = grid, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        img = x.reshape(b, self.grid, self.grid, c).permute(0, 3, 1, 2)
        y = F.avg_pool2d(img, self.k, stride=self.k, ceil_mode=True, count_include_pad=False)
        return y.permute(0, 2, 3, 1).reshape(b, y.shape[2] * y.shape[3], c)


class CrossAttention(nn.Module):
    """Multi-head cross-attention of q (B, Nq, D) over kv (B, Nk, D)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.h = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        b, nq, d = q.shape
        qh = self.q(q).view(b, nq, self.h, d // self.h).transpose(1, 2)
        k, v = self.kv(kv).view(b, kv.shape[1], 2, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qh, k, v)
        return self.out(o.transpose(1, 2).reshape(b, nq, d))


class MLP(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def pooled_tokens(grid: int, k: int) -> int:
    return math.ceil(grid / k) ** 2


class IANAligner(nn.Module):
    """MAGE's Intelligent Alignment Network (see the module docstring)."""

    def __init__(self, cfg: dict, in_dim: int, out_dim: int, grid: int):
        super().__init__()
        self.vab = IANProjection(in_dim, out_dim)
        self.pool = PatchPool(grid, cfg["pool_k"])
        self.pool_proj = nn.Linear(in_dim, out_dim)
        self.pool_norm = nn.LayerNorm(out_dim)
        self.norm_q = nn.LayerNorm(out_dim)
        self.norm_kv = nn.LayerNorm(out_dim)
        self.attn = CrossAttention(out_dim, cfg["num_heads"])
        self.norm_mlp = nn.LayerNorm(out_dim)
        self.mlp = MLP(out_dim, int(cfg["mlp_ratio"] * out_dim), out_dim)
        tokens = pooled_tokens(grid, cfg["pool_k"])
        self.pos = nn.Parameter(torch.zeros(tokens, out_dim)) if cfg.get("pos_embed", True) else None

    def seb(self, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Semantic enhancement block: queries q (n, T, D) over aligned patches a (n, g·g, D)."""
        h = q + self.attn(self.norm_q(q), self.norm_kv(a))
        return h + self.mlp(self.norm_mlp(h))

    def local(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, b): the aligned patches (N, g·g, D) and the pooled local features (N, T, D)."""
        return self.vab(v), self.pool_norm(self.pool_proj(self.pool(v)))

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.pos is None else z + self.pos.to(z.dtype)

    def forward(self, v: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.local(v)
        return self.finish(self.seb(b, a))


def _context_plan(counts: list[int], include_self: bool) -> tuple[list[int], list[int], list[int], list[int]]:
    """(unit, src, guided, ctx_of): pair q adds image src[q] to context unit[q]; image guided[i]
    takes context ctx_of[i]. Units are the multi-image samples (include_self) or their images
    (the context of the others only)."""
    units, srcs, guided, ctx_of, lo = [], [], [], [], 0
    for n in counts:
        imgs, lo = list(range(lo, lo + n)), lo + n
        if n < 2:
            continue
        guided += imgs
        if include_self:
            unit = len(set(ctx_of))
            units, srcs, ctx_of = units + [unit] * n, srcs + imgs, ctx_of + [unit] * n
            continue
        for i in imgs:
            others = [j for j in imgs if j != i]
            units, srcs = units + [len(ctx_of)] * len(others), srcs + others
            ctx_of.append(len(ctx_of))
    return units, srcs, guided, ctx_of


class SAMAligner(IANAligner):
    """IAN with SAM's guidance between each image and its sample's context (one-image samples:
    plain IAN). forward(v (N, g·g, C), image_counts (B,) summing to N) → Z (N, T, D)."""

    def __init__(self, cfg: dict, in_dim: int, out_dim: int, grid: int):
        super().__init__(cfg, in_dim, out_dim, grid)
        self.include_self = cfg.get("sam_include_self", True)
        self.score = nn.Linear(in_dim, 1, bias=False)
        self.p12 = nn.Linear(out_dim, out_dim)
        self.p21 = nn.Linear(out_dim, out_dim)

    def guidance(self, v: torch.Tensor, b: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """P21(c_i) per image (N, T, D), zero for images of one-image samples."""
        plan = _context_plan(counts, self.include_self)
        if not plan[2]:
            return torch.zeros_like(b)
        unit, src, guided, ctx_of = (torch.tensor(x, dtype=torch.long, device=v.device) for x in plan)
        s = self.score(v).squeeze(-1).float()[src]  # (Q, P)
        n_units = int(ctx_of.max()) + 1
        m = torch.full((n_units, s.shape[1]), float("-inf"), dtype=s.dtype, device=s.device)
        m = m.scatter_reduce(0, unit[:, None].expand_as(s), s, reduce="amax", include_self=True)
        e = torch.exp(s - m[unit])
        alpha = (e / torch.zeros_like(m).index_add(0, unit, e)[unit]).to(v.dtype)
        v_ctx = v.new_zeros(n_units, v.shape[1], v.shape[2]).index_add(0, unit, alpha.unsqueeze(-1) * v[src])
        bq = b[guided]
        c = self.seb(bq + self.p12(bq), self.vab(v_ctx)[ctx_of])
        return torch.zeros_like(b).index_add(0, guided, self.p21(c))

    def forward(self, v: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        counts = [1] * v.shape[0] if image_counts is None else [int(n) for n in image_counts.flatten().tolist()]
        if sum(counts) != v.shape[0]:
            raise ValueError(f"image_counts sum to {sum(counts)} for {v.shape[0]} images")
        a, b = self.local(v)
        return self.finish(self.seb(b + self.guidance(v, b, counts), a))


class PoolMLPAligner(nn.Module):
    """Patch pool then a 2-layer GELU MLP."""

    def __init__(self, cfg: dict, in_dim: int, out_dim: int, grid: int):
        super().__init__()
        self.pool = PatchPool(grid, cfg["pool_k"])
        self.mlp = MLP(in_dim, out_dim, out_dim)

    def forward(self, v: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.pool(v))


class PatchAligner(nn.Module):
    """One token per patch: ``linear`` (the module's own weight/bias) or ``mlp2x_gelu`` (fc1/fc2)."""

    def __init__(self, cfg: dict, in_dim: int, out_dim: int, grid: int):
        super().__init__()
        if cfg["type"] == "linear":
            self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
            self.bias = nn.Parameter(torch.zeros(out_dim))
        else:
            self.fc1 = nn.Linear(in_dim, out_dim)
            self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, v: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        if hasattr(self, "weight"):
            return F.linear(v, self.weight, self.bias)
        return self.fc2(F.gelu(self.fc1(v)))


ALIGNERS = {
    "ian": IANAligner,
    "sam": SAMAligner,
    "pool_mlp": PoolMLPAligner,
    "linear": PatchAligner,
    "mlp2x_gelu": PatchAligner,
}


def build_aligner(cfg: dict, in_dim: int, out_dim: int, grid: int) -> nn.Module:
    if cfg["type"] not in ALIGNERS:
        raise ValueError(f"aligner type {cfg['type']!r} is not one of {sorted(ALIGNERS)}")
    return ALIGNERS[cfg["type"]](cfg, in_dim, out_dim, grid)
