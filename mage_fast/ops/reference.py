"""Naive pure-torch twins of the ops (plain autograd), the ground truth of the tests.

Everything is computed in the input dtype, so running a reference in bf16 shows the reference's
own low-precision error (the low-precision rule of the op tests: a kernel may be at most ~2x that far from the fp32
reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_pool_ref(x: torch.Tensor, grid: tuple[int, int], k: int = 2) -> torch.Tensor:
    """x (B, H*W, C) -> (B, ceil(H/k)*ceil(W/k), C) via avg_pool2d(ceil_mode, no pad counting)."""
    B, _, C = x.shape
    H, W = grid
    img = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    y = F.avg_pool2d(img, k, stride=k, ceil_mode=True, count_include_pad=False)
    return y.permute(0, 2, 3, 1).reshape(B, y.shape[2] * y.shape[3], C)


def ian_projection_ref(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    eps: float = 1e-5,
) -> torch.Tensor:
    """x (..., C) -> LayerNorm(GELU_erf(x w1^T + b1) w2^T + b2) (..., D)."""
    h = F.gelu(F.linear(x, w1, b1))
    return F.layer_norm(F.linear(h, w2, b2), (w2.shape[0],), ln_w, ln_b, eps)


def ce_mse_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    img: torch.Tensor,
    img_target: torch.Tensor,
    img_mask: torch.Tensor,
    lam: float,
    ignore_index: int = -100,
    num_items: int | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full (N, V) logits + F.cross_entropy(sum) / denom, masked MSE; -> 0-dim fp32 (loss, ce, mse)."""
    logits = hidden @ weight.t()
    ce_sum = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    denom = num_items if num_items is not None else (labels != ignore_index).sum().clamp(min=1)
    ce = (ce_sum / denom).float()
    sel = (img - img_target)[img_mask]
    mse = (sel * sel).mean().float() if sel.numel() else img.sum().float() * 0.0
    return ce + lam * mse, ce, mse
