"""ce_mse: fused linear cross-entropy (never the N x V logits) + masked MSE, forward with gradients.

The tokens are walked in chunks of `rows` (the caller's memory rule). Per chunk:
  1. GEMM h_chunk W^T -> fp32 logits (rows, V) (one reused buffer);
  2. `_ce_mse_ce_kernel`, one token per program: an online log-sum-exp over vocabulary tiles, the
     token's CE (0 when ignored), and, when a gradient is wanted, (softmax - onehot) * valid / denom
     written in hidden's dtype as the next GEMMs' operand. The subtraction of the one-hot happens
     in fp32: for a confident prediction p_target = 1 - 1e-4 rounds to 1.0 in bf16, so p - 1 taken
     after rounding would be 0 (the whole gradient of that token lost); taken in fp32 it is -1e-4,
     which bf16 then stores with 3 significant digits;
  3. grad_hidden[chunk] = G W (GEMM into its rows of the output) and grad_weight += G^T h_chunk
     (GEMM with an accumulate epilogue into one fp32 (V, H) buffer, rounded once at the end).
The MSE term: `_ce_mse_mse_kernel`, one image vector per program, squared error and gradient in
fp32. Per-token and per-image partial sums are summed by torch: deterministic, no atomics, and the
denominator stays on the device (no host sync).
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
    logits_ptr, grad_ptr, labels_ptr, loss_ptr, inv_ptr, V, ignore_index, s_l, s_g,
    NEED_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
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
    x_y = tl.load(base + tl.where(valid, y, 0))
    tl.store(loss_ptr + row, tl.where(valid, lse - x_y, 0.0))
    if NEED_GRAD:
        scale = tl.where(valid, tl.load(inv_ptr), 0.0)
        for v0 in range(0, V, BLOCK_V):
            cols = v0 + cols0
            x = tl.load(base + cols, mask=cols < V, other=float("-inf"))
            g = (tl.exp(x - lse) - tl.where(cols == y, 1.0, 0.0)) * scale  # fp32 (see module doc)
            tl.store(grad_ptr + row * s_g + cols, round_to(g, grad_ptr.dtype.element_ty), mask=cols < V)


@triton.jit
def _ce_mse_mse_kernel(
    img_ptr, tgt_ptr, mask_ptr, sq_ptr, grad_ptr, cnt_ptr, D, s_i, s_ic, s_t, s_tc, s_g,
    NEED_GRAD: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    keep = tl.load(mask_ptr + row).to(tl.float32)
    scale = 2.0 / tl.load(cnt_ptr)
    cols0 = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + cols0
        ok = cols < D
        a = tl.load(img_ptr + row * s_i + cols * s_ic, mask=ok, other=0.0).to(tl.float32)
        t = tl.load(tgt_ptr + row * s_t + cols * s_tc, mask=ok, other=0.0).to(tl.float32)
        diff = (a - t) * keep
        acc += diff * diff
        if NEED_GRAD:
            tl.store(grad_ptr + row * s_g + cols, round_to(diff * scale, grad_ptr.dtype.element_ty), mask=ok)
    tl.store(sq_ptr + row, tl.sum(acc, axis=0))


def _ce_chunks(hidden, weight, labels, inv, ignore_index, need_h, need_w, rows):
    """-> (per-token CE (N,) fp32, grad_hidden or None, grad_weight fp32 or None)."""
    N, H = hidden.shape
    V = weight.shape[0]
    dev, dt = hidden.device, hidden.dtype
    need_g = need_h or need_w
    loss_rows = torch.empty((N,), dtype=torch.float32, device=dev)
    gh = torch.empty((N, H), dtype=dt, device=dev) if need_h else None
    gw = torch.zeros((V, H), dtype=torch.float32, device=dev) if need_w else None
    if N == 0:
        return loss_rows, gh, gw
    rows = max(1, min(rows, N))
    logits = torch.empty((rows, V), dtype=torch.float32, device=dev)
    grad = torch.empty((rows, V), dtype=dt, device=dev) if need_g else logits
    block_v, warps = _launch.ce_settings(V)
    wt = weight.t()
    for s in range(0, N, rows):
        e = min(N, s + rows)
        r = e - s
        h = hidden[s:e]
        matmul(h, wt, logits[:r])
        _ce_mse_ce_kernel[(r,)](
            logits, grad, labels[s:e], loss_rows[s:e], inv, V, ignore_index, logits.stride(0), grad.stride(0),
            NEED_GRAD=need_g, BLOCK_V=block_v, num_warps=warps,
        )  # fmt: skip
        if need_h:
            matmul(grad[:r], weight, gh[s:e])
        if need_w:
            matmul(grad[:r].t(), h, gw, "acc")
    return loss_rows, gh, gw


def ce_mse_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    img: torch.Tensor,
    img_target: torch.Tensor,
    img_mask: torch.Tensor,
    lam: float,
    ignore_index: int,
    num_items: float | None,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    need_img_grad: bool,
    rows: int,
) -> tuple[torch.Tensor, ...]:
    """hidden (N, H), weight (V, H), labels (N,) int64 in [0, V) or ignore_index, img/img_target
    (M, D), img_mask (M,) bool, `rows` tokens per chunk ->
    (loss, ce, mse) 0-dim fp32, d ce/d hidden (N, H), d ce/d weight (V, H), d mse/d img (M, D) in
    their input's dtype (None where not needed)."""
    dev = hidden.device
    labels = labels.contiguous()
    valid = labels != ignore_index
    if num_items is None:
        denom = valid.sum().clamp(min=1).float()  # on the device: no host sync
    else:
        denom = torch.tensor(max(float(num_items), 1.0), device=dev)
    inv = (1.0 / denom).reshape(1)
    loss_rows, gh, gw = _ce_chunks(hidden, weight, labels, inv, int(ignore_index), need_hidden_grad,
                                   need_weight_grad, rows)  # fmt: skip
    ce = loss_rows.sum() * inv[0]
    if gw is not None and weight.dtype != torch.float32:
        gw = gw.to(weight.dtype)

    M, D = img.shape
    cnt = (img_mask.sum().float() * D).clamp(min=1).reshape(1)
    sq = torch.zeros((M,), dtype=torch.float32, device=dev)
    gi = torch.empty((M, D), dtype=img.dtype, device=dev) if need_img_grad else None
    if M > 0 and D > 0:
        block_d, warps = _launch.mse_settings(D)
        _ce_mse_mse_kernel[(M,)](
            img, img_target, img_mask.contiguous(), sq, gi if gi is not None else img, cnt, D,
            img.stride(0), img.stride(1), img_target.stride(0), img_target.stride(1),
            gi.stride(0) if gi is not None else 0,
            NEED_GRAD=need_img_grad, BLOCK_D=block_d, num_warps=warps,
        )  # fmt: skip
    elif gi is not None:
        gi.zero_()
    mse = sq.sum() / cnt[0]
    loss = ce + lam * mse
    return loss, ce, mse, gh, gw, gi
