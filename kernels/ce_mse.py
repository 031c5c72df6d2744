"""ce_mse: fused linear cross-entropy (never the N x V logits) + masked MSE, forward with gradients.

The tokens are walked in chunks of `rows` (mage_fast.ops.ce_mse_plan.plan). Per chunk:
  1. GEMM h_chunk W^T -> fp32 logits (rows, V) (one reused buffer);
  2. `_ce_mse_ce_kernel`, one token per program: an online log-sum-exp over vocabulary tiles, the
     token's CE (0 when ignored), and, when a gradient is wanted, P = softmax - onehot, unscaled,
     in hidden's dtype as the next GEMMs' operand. The target class is written as minus the sum
     of the other classes' probabilities, accumulated in fp32: for a confident prediction
     p_target = 1 - 1e-6 carries an fp32 rounding error of the size of 1 - p itself, the sum of the
     others does not. Ignored rows are selected to 0 (tl.where), so NaN/Inf logits there stay out;
  3. grad_hidden[chunk] = P W (GEMM into its rows of the output) and grad_weight += P^T h_chunk
     (the ignored rows of h selected to 0). grad_weight: the first chunk stores its product in
     one fp32 (V, H) buffer (no zero fill), the middle ones accumulate into it, the last adds its
     product to it and writes the sum in the output dtype (no rounding pass); one chunk writes
     the output directly. The GEMMs run with fixed tiles per shape (kernels/_gemm.matmul).
The MSE term: `_ce_mse_mse_kernel`, one image vector per program, squared error and the unscaled
gradient (img - img_target on masked rows) in fp32. Per-token and per-image partial sums are
summed by torch: deterministic, no atomics, and the denominator stays on the device (no host sync).
The op (mage_fast.ops.ce_mse) divides by the denominator and returns the scales 1/denom and
2/count for the autograd backward, which applies them in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mage_fast.kernels import _launch
from mage_fast.kernels._gemm import matmul
from mage_fast.kernels._launch import round_to


@triton.jit
def _ce_mse_ce_kernel(
    logits_ptr,
    grad_ptr,
    labels_ptr,
    loss_ptr,
    V,
    ignore_index,
    s_l,
    s_g,
    NEED_GRAD: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    y = tl.load(labels_ptr + row)
    valid = y != ignore_index
    base = logits_ptr + row * s_l
    cols0 = tl.arange(0, BLOCK_V)
    m = tl.full([], float("-inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        x = tl.load(base + cols, mask=cols < V, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    y_safe = tl.where(valid, y, 0)
    x_y = tl.load(base + y_safe)
    tl.store(loss_ptr + row, tl.where(valid, lse - x_y, 0.0))
    if NEED_GRAD:
        y_skip = tl.where(valid, y, -1)  # the target column is written after the loop
        other = tl.full([], 0.0, tl.float32)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + cols0
            keep = (cols < V) & (cols != y_skip)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf"))
            e = tl.where(keep & valid, tl.exp(x - lse), 0.0)
            other += tl.sum(e, axis=0)
            tl.store(grad_ptr + row * s_g + cols, round_to(e, grad_ptr.dtype.element_ty), mask=keep)
        tl.store(grad_ptr + row * s_g + y_safe, round_to(-other, grad_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _ce_mse_mse_kernel(
    img_ptr,
    tgt_ptr,
    mask_ptr,
    sq_ptr,
    grad_ptr,
    D,
    s_i,
    s_ic,
    s_t,
    s_tc,
    s_g,
    NEED_GRAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    keep = tl.load(mask_ptr + row) != 0
    cols0 = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        ok = cols < D
        a = tl.load(img_ptr + row * s_i + cols * s_ic, mask=ok, other=0.0).to(tl.float32)
        t = tl.load(tgt_ptr + row * s_t + cols * s_tc, mask=ok, other=0.0).to(tl.float32)
        diff = tl.where(keep, a - t, 0.0)
        acc += diff * diff
        if NEED_GRAD:
            tl.store(grad_ptr + row * s_g + cols, round_to(diff, grad_ptr.dtype.element_ty), mask=ok)
    tl.store(sq_ptr + row, tl.sum(acc, axis=0))


@_launch.on_tensor_device
def linear_ce_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int,
    need_h: bool,
    need_w: bool,
    rows: int,
    gw_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """hidden (N, H), weight (V, H), labels (N,) int64 in [0, V) or ignore_index, `rows` tokens per
    chunk -> (per-token CE (N,) fp32, the unscaled P W (N, H) in hidden's dtype or None, P^T h
    (V, H) summed in fp32, returned in `gw_dtype`, or None)."""
    labels = labels.contiguous()
    ignore_index = int(ignore_index)
    N, H = hidden.shape
    V = weight.shape[0]
    dev, dt = hidden.device, hidden.dtype
    need_g = need_h or need_w
    loss_rows = torch.empty((N,), dtype=torch.float32, device=dev)
    gh = torch.empty((N, H), dtype=dt, device=dev) if need_h else None
    gw = torch.empty((V, H), dtype=gw_dtype, device=dev) if need_w else None
    if N == 0:
        return loss_rows, gh, gw.zero_() if gw is not None else None
    # the fp32 running sum of P^T h over the chunks before the last (gw itself when it is fp32)
    acc = None if gw is None or gw_dtype == torch.float32 or N <= rows else torch.empty((V, H), device=dev)
    rows = max(1, min(rows, N))
    logits = torch.empty((rows, V), dtype=torch.float32, device=dev)
    grad = torch.empty((rows, V), dtype=dt, device=dev) if need_g else logits
    block_v, warps = _launch.ce_settings(V)
    wt = weight.t()
    for s in range(0, N, rows):
        e = min(N, s + rows)
        r = e - s
        h, lab = hidden[s:e], labels[s:e]
        matmul(h, wt, logits[:r])
        _ce_mse_ce_kernel[(r,)](
            logits,
            grad,
            lab,
            loss_rows[s:e],
            V,
            ignore_index,
            logits.stride(0),
            grad.stride(0),
            NEED_GRAD=need_g,
            BLOCK_V=block_v,
            num_warps=warps,
        )
        if need_h:
            matmul(grad[:r], weight, gh[s:e])
        if need_w:
            hm = h.masked_fill((lab == ignore_index)[:, None], 0.0)  # NaN/Inf of padding rows stay out
            _grad_weight_chunk(grad[:r].t(), hm, gw, acc, first=s == 0, last=e == N)
    return loss_rows, gh, gw


def _grad_weight_chunk(pt: torch.Tensor, hm: torch.Tensor, gw: torch.Tensor, acc, first: bool, last: bool) -> None:
    """One chunk's P^T h into grad_weight: stored by the first chunk, accumulated by the others in
    fp32 (`acc`, or gw itself when gw is fp32), the last one writing gw in its dtype."""
    running = gw if acc is None else acc
    if first and last:
        matmul(pt, hm, gw)
    elif first:
        matmul(pt, hm, running)
    elif last:
        matmul(pt, hm, gw, "acc", aux=running)
    else:
        matmul(pt, hm, running, "acc")


@_launch.on_tensor_device
def masked_mse_fwd(
    img: torch.Tensor, img_target: torch.Tensor, img_mask: torch.Tensor, need_img_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """img/img_target (M, D), img_mask (M,) bool -> (MSE over the masked rows 0-dim fp32, the
    unscaled img - img_target (M, D) in img's dtype (0 on unmasked rows) or None, 2 / count 0-dim)."""
    M, D = img.shape
    dev = img.device
    cnt = (img_mask.sum().float() * D).clamp(min=1).reshape(1)
    sq = torch.zeros((M,), dtype=torch.float32, device=dev)
    gi = torch.empty((M, D), dtype=img.dtype, device=dev) if need_img_grad else None
    if M > 0 and D > 0:
        block_d, warps = _launch.mse_settings(D)
        _ce_mse_mse_kernel[(M,)](
            img,
            img_target,
            img_mask.contiguous(),
            sq,
            gi if gi is not None else img,
            D,
            img.stride(0),
            img.stride(1),
            img_target.stride(0),
            img_target.stride(1),
            gi.stride(0) if gi is not None else 0,
            NEED_GRAD=need_img_grad,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    elif gi is not None:
        gi.zero_()
    return sq.sum() / cnt[0], gi, 2.0 / cnt[0]
