"""SAM: multi-image semantic alignment on the IAN aligner (the SAM paper's method, on MAGE's IAN).

For the images of one sample, V_j (g·g, C), each image's visual tokens are extracted with guidance
from the whole set:

    alpha_j = softmax_j(Linear_C→1(V_j))           per patch position, over the sample's images
    V_ctx   = sum_j alpha_j V_j                      one context per sample        (g·g, C)
    a_ctx   = VAB(V_ctx)                             the same VAB weights as the images
    c_i     = SEB(b_i + P12(b_i), a_ctx)             context stream, guided by image i's state
    Z_i     = SEB(b_i + P21(c_i), a_i) (+ pos)       image stream, guided by the context result

P12 and P21 are zero-initialised D×D linears, so at step 0 Z_i is IAN's output exactly, and a row
with one image always is plain IAN (its guidance is not added). ``include_self`` (the authors'
released code; default) takes the softmax over all the sample's images; exclude-self (their
paper's wording) over the others only, which makes the context depend on i: one per image then.
The context V_ctx and its VAB pass run once per sample (the released code repeats them per image).

Every call runs the same modules the same number of times whatever the image counts (ZeRO-3
gathers parameters per module call, so a rank that skipped one would hang the others): without a
multi-image sample the guidance runs on one image and is multiplied by zero.
"""

from __future__ import annotations

import torch
from torch import nn

from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.ian import IANAligner


def context_pairs(counts: torch.Tensor, include_self: bool) -> tuple[torch.Tensor, ...]:
    """Index plan for the contexts of the samples with >= 2 images.

    counts (B,) long, images per sample in ``v``'s order. Returns ``unit`` (Q,) and ``src`` (Q,):
    pair q adds image src[q] to context unit[q]; ``guided`` (G,) the images that get guidance and
    ``ctx_of`` (G,) each one's context unit. Units are samples (include_self) or images (exclude).
    """
    dev = counts.device
    first = torch.cumsum(counts, 0) - counts
    multi = (counts >= 2).nonzero().flatten().tolist()
    units, srcs, guided, ctx_of = [], [], [], []
    for k, s in enumerate(multi):
        lo, n = int(first[s]), int(counts[s])
        imgs = list(range(lo, lo + n))
        guided += imgs
        if include_self:
            units += [k] * n
            srcs += imgs
            ctx_of += [k] * n
        else:
            for i in imgs:
                u = len(ctx_of)
                others = [j for j in imgs if j != i]
                units += [u] * len(others)
                srcs += others
                ctx_of.append(u)
    return tuple(torch.tensor(x, dtype=torch.long, device=dev) for x in (units, srcs, guided, ctx_of))


def grouped_softmax(scores: torch.Tensor, unit: torch.Tensor, src: torch.Tensor, n_units: int) -> torch.Tensor:
    """alpha (Q, P): per unit and patch position, the softmax of scores[src] over the unit's pairs.

    scores (N, P) fp32, unit/src (Q,) from :func:`context_pairs`.
    """
    s = scores[src]  # (Q, P)
    idx = unit[:, None].expand_as(s)
    m = torch.full((n_units, s.shape[1]), float("-inf"), dtype=s.dtype, device=s.device)
    m = m.scatter_reduce(0, idx, s, reduce="amax", include_self=True)
    e = torch.exp(s - m[unit])
    den = torch.zeros_like(m).index_add(0, unit, e)
    return e / den[unit]


def grouped_softmax_sum(
    scores: torch.Tensor, v: torch.Tensor, unit: torch.Tensor, src: torch.Tensor, n_units: int
) -> torch.Tensor:
    """Per unit and patch position: sum over the unit's pairs of softmax(scores[src]) · v[src].

    scores (N, P) fp32, v (N, P, C), unit/src (Q,) → (n_units, P, C) in v's dtype.
    """
    alpha = grouped_softmax(scores, unit, src, n_units).to(v.dtype)
    out = v.new_zeros(n_units, v.shape[1], v.shape[2])
    return out.index_add(0, unit, alpha.unsqueeze(-1) * v[src])


def _drop_score_bias(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Accept weights that carry a ``score.bias``: it shifts every image's score equally, so the
    softmax over images, and with it the output, is the same without it."""
    state_dict.pop(prefix + "score.bias", None)


class SAMAligner(IANAligner):
    """IAN with SAM's bidirectional guidance between each image and its sample's context.

    forward(v (N, g·g, C), image_counts (B,) long summing to N, or None: one image per sample)
    → Z (N, T, D). The IAN weights are created first, so under the same seed they equal IANAligner's.
    """

    takes_image_counts = True

    def __init__(self, cfg: AlignerConfig, in_dim: int, out_dim: int, grid: int, kernels: KernelConfig):
        super().__init__(cfg, in_dim, out_dim, grid, kernels)
        self.include_self = cfg.sam_include_self
        # No bias: the softmax over a sample's images is invariant to a constant added to every
        # score, so a bias gets a zero gradient in exact arithmetic and could never learn.
        self.score = nn.Linear(in_dim, 1, bias=False)
        self.register_load_state_dict_pre_hook(_drop_score_bias)
        self.p12 = nn.Linear(out_dim, out_dim)
        self.p21 = nn.Linear(out_dim, out_dim)
        for p in (*self.p12.parameters(), *self.p21.parameters()):
            nn.init.zeros_(p)

    def seb(self, q: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Semantic enhancement block: queries q (n, T, D) over aligned patches a (n, g·g, D)."""
        h = q + self.attn(self.norm_q(q), self.norm_kv(a))
        return h + self.mlp(self.norm_mlp(h))

    def guidance(self, v: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """P21(c_i) for every image (N, T, D); zero rows for images of one-image samples."""
        unit, src, guided, ctx_of = context_pairs(counts, self.include_self)
        gate = 1.0
        if guided.numel() == 0:  # no multi-image sample: same module calls on image 0, times zero
            unit = src = guided = ctx_of = torch.zeros(1, dtype=torch.long, device=v.device)
            gate = 0.0
        scores = self.score(v).squeeze(-1).float()  # (N, P)
        v_ctx = grouped_softmax_sum(scores, v, unit, src, int(ctx_of.max()) + 1)
        a_ctx = self.vab(v_ctx)
        bq = b[guided]
        c = self.seb(bq + self.p12(bq), a_ctx[ctx_of])
        g = self.p21(c) * gate
        return torch.zeros_like(b).index_add(0, guided, g)

    def forward(self, v: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        if image_counts is None:
            image_counts = torch.ones(v.shape[0], dtype=torch.long, device=v.device)
        image_counts = image_counts.to(v.device)
        if int(image_counts.sum()) != v.shape[0]:
            raise ValueError(f"image_counts sum to {int(image_counts.sum())} for {v.shape[0]} images")
        a = self.vab(v)
        b = self.pool_norm(self.pool_proj(self.pool(v)))
        z = self.seb(b + self.guidance(v, b, image_counts), a)
        return z if self.pos is None else z + self.pos.to(z.dtype)
