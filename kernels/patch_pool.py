"""patch_pool in token layout: (B, H*W, C) -> (B, ceil(H/k)*ceil(W/k), C), and its backward.

A program owns BLOCK_W output cells of one output row (b, ho) and BLOCK_C channels. Forward: it
walks the k x k offsets of its cells, loading (BLOCK_W, BLOCK_C) tiles straight from the token
layout (each token row contiguous along C: vectorised loads), accumulates in fp32 and divides by
the number of grid cells that exist (edge cells of non-divisible grids count fewer). Every input
element is read exactly once; no permute, no padding copy. Backward: the mirror image, each
output gradient read once and written, divided by the count, to the cells it averaged.

Strides are arguments, so non-contiguous inputs and incoming gradients need no copy (a stride of 1
along C is specialised by Triton, which then vectorises).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mage_fast.kernels import _launch
from mage_fast.kernels._launch import round_to


@triton.jit
def _patch_pool_fwd_kernel(
    x_ptr, y_ptr, H, W, Wo, C, k,
    s_xb, s_xt, s_xc, s_yb, s_yt, s_yc,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)  # b * Ho + ho
    Ho = tl.cdiv(H, k)
    b = row // Ho
    ho = row % Ho
    wo = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_w = wo < Wo
    mask_c = c < C
    h0 = ho * k
    w0 = wo * k
    x_base = x_ptr + b.to(tl.int64) * s_xb + c[None, :] * s_xc
    acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    for i in range(0, k):
        h = h0 + i
        for j in range(0, k):
            w = w0 + j
            ok = mask_w & (w < W) & (h < H)
            t = (h * W + w).to(tl.int64)
            v = tl.load(x_base + t[:, None] * s_xt, mask=ok[:, None] & mask_c[None, :], other=0.0)
            acc += v.to(tl.float32)
    # Existing cells: min(k, H - h0) rows times min(k, W - w0) columns.
    rows = tl.minimum(H - h0, k)
    cols = tl.minimum(W - w0, k)
    cnt = tl.maximum(rows * cols, 1).to(tl.float32)
    out = acc / cnt[:, None]
    o = (ho * Wo + wo).to(tl.int64)
    y_ptrs = y_ptr + b.to(tl.int64) * s_yb + o[:, None] * s_yt + c[None, :] * s_yc
    tl.store(y_ptrs, round_to(out, y_ptr.dtype.element_ty), mask=mask_w[:, None] & mask_c[None, :])


@triton.jit
def _patch_pool_bwd_kernel(
    g_ptr, dx_ptr, H, W, Wo, C, k,
    s_gb, s_gt, s_gc, s_db, s_dt, s_dc,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    Ho = tl.cdiv(H, k)
    b = row // Ho
    ho = row % Ho
    wo = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_w = wo < Wo
    mask_c = c < C
    h0 = ho * k
    w0 = wo * k
    rows = tl.minimum(H - h0, k)
    cols = tl.minimum(W - w0, k)
    cnt = tl.maximum(rows * cols, 1).to(tl.float32)
    o = (ho * Wo + wo).to(tl.int64)
    g_ptrs = g_ptr + b.to(tl.int64) * s_gb + o[:, None] * s_gt + c[None, :] * s_gc
    g = tl.load(g_ptrs, mask=mask_w[:, None] & mask_c[None, :], other=0.0).to(tl.float32)
    g = round_to(g / cnt[:, None], dx_ptr.dtype.element_ty)
    dx_base = dx_ptr + b.to(tl.int64) * s_db + c[None, :] * s_dc
    for i in range(0, k):
        h = h0 + i
        for j in range(0, k):
            w = w0 + j
            ok = mask_w & (w < W) & (h < H)
            t = (h * W + w).to(tl.int64)
            tl.store(dx_base + t[:, None] * s_dt, g, mask=ok[:, None] & mask_c[None, :])


def _grid_and_blocks(B: int, H: int, W: int, C: int, k: int, elem_bytes: int):
    Ho, Wo = triton.cdiv(H, k), triton.cdiv(W, k)
    block_w, block_c, warps = _launch.pool_settings(C, Wo, elem_bytes)
    grid = (B * Ho, triton.cdiv(Wo, block_w), triton.cdiv(C, block_c))
    return Ho, Wo, grid, block_w, block_c, warps


def patch_pool_fwd(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """x (B, H*W, C), any strides -> y (B, ceil(H/k)*ceil(W/k), C) in x.dtype (fp32 accumulation)."""
    B, T, C = x.shape
    assert T == H * W and k >= 1, (x.shape, H, W, k)
    Ho, Wo, grid, bw, bc, warps = _grid_and_blocks(B, H, W, C, k, x.element_size())
    y = torch.empty((B, Ho * Wo, C), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _patch_pool_fwd_kernel[grid](
        x, y, H, W, Wo, C, k, *x.stride(), *y.stride(), BLOCK_W=bw, BLOCK_C=bc, num_warps=warps
    )
    return y


def patch_pool_bwd(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """grad_y (B, ceil(H/k)*ceil(W/k), C), any strides -> grad_x (B, H*W, C) in grad_y.dtype."""
    B, To, C = grad_y.shape
    Ho, Wo, grid, bw, bc, warps = _grid_and_blocks(B, H, W, C, k, grad_y.element_size())
    assert To == Ho * Wo and k >= 1, (grad_y.shape, H, W, k)
    dx = torch.empty((B, H * W, C), dtype=grad_y.dtype, device=grad_y.device)
    if dx.numel() == 0:
        return dx
    # Every token belongs to exactly one cell, so the kernel writes every element of dx.
    _patch_pool_bwd_kernel[grid](
        grad_y, dx, H, W, Wo, C, k, *grad_y.stride(), *dx.stride(), BLOCK_W=bw, BLOCK_C=bc, num_warps=warps
    )
    return dx
