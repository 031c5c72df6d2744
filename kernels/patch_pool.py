"""patch_pool in token layout: (B, H*W, C) -> (B, ceil(H/k)*ceil(W/k), C), and its backward.

A program owns BLOCK_W output cells of one output row (b, ho) and BLOCK_C channels. Forward: it
walks the k x k offsets of its cells (`K` a compile-time constant: the loads of one cell are
unrolled and issued together), loading (BLOCK_W, BLOCK_C) tiles straight from the token layout
(each token row contiguous along C: vectorised loads), accumulates in fp32 and divides by the
number of grid cells that exist (edge cells of non-divisible grids count fewer). Every input
element is read exactly once; no permute, no padding copy. Backward: the mirror image, each
output gradient read once and written, divided by the count, to the cells it averaged. One
kernel does both (`BACKWARD` a constexpr), so the two directions share the walk and its masks.

Layout (`_launch.pool_settings`): BLOCK_W divides Wo where a power of two does (Wo = 12: 4, not 8
with a quarter of the lanes masked off) and BLOCK_C divides C where it can; the constexprs
EVEN_HW (k divides H and W) and MASKED (a tile overhangs Wo or C) drop the masks they make
redundant, so the common case (24 x 24 grid, k = 2, C = 1024) loads and stores without masks.
Offsets are int32 within a batch item and int64 only for the batch base (b * stride), which is
where a large batch overflows.

Strides are arguments, so non-contiguous inputs and incoming gradients need no copy (a stride of 1
along C is specialised by Triton, which then vectorises).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mage_fast.kernels import _launch
from mage_fast.kernels._launch import on_tensor_device, round_to


@triton.jit
def _cell(H, W, Wo, C, K: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_HW: tl.constexpr):
    """(b, h0, w0 (BLOCK_W,), output tokens (BLOCK_W,), channels (BLOCK_C,), tile mask, 1/cell
    count (BLOCK_W,)) of this program."""
    row = tl.program_id(0)  # b * Ho + ho
    Ho = tl.cdiv(H, K)
    b = row // Ho
    ho = row % Ho
    wo = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (wo < Wo)[:, None] & (c < C)[None, :]
    h0 = ho * K
    w0 = wo * K
    if EVEN_HW:
        inv = tl.full((BLOCK_W,), 1.0 / (K * K), tl.float32)
    else:  # existing cells: min(K, H - h0) rows times min(K, W - w0) columns
        inv = 1.0 / tl.maximum(tl.minimum(H - h0, K) * tl.minimum(W - w0, K), 1).to(tl.float32)
    return b, h0, w0, ho * Wo + wo, c, mask, inv


@triton.jit
def _offset_mask(mask, h0, w0, i, j, H, W, EVEN_HW: tl.constexpr):
    """The tile mask of the tokens at offset (i, j) of each cell: an edge cell of a grid k does
    not divide has no token there."""
    if not EVEN_HW:
        mask = mask & ((w0 + j < W) & (h0 + i < H))[:, None]
    return mask


@triton.jit
def _patch_pool_kernel(
    in_ptr, out_ptr, H, W, Wo, C,
    s_ib, s_it, s_ic, s_ob, s_ot, s_oc,  # (batch, token, channel) strides of each
    K: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_HW: tl.constexpr, MASKED: tl.constexpr,
    BACKWARD: tl.constexpr,
):  # fmt: skip
    """Forward: in x (B, H*W, C) -> out y (B, Ho*Wo, C), each cell's mean. BACKWARD: in grad_y
    (B, Ho*Wo, C) -> out dx (B, H*W, C), each cell's gradient / count on each of its tokens. Both
    directions walk the same k x k offsets under the same masks; only the copy's direction differs."""
    b, h0, w0, o, c, mask, inv = _cell(H, W, Wo, C, K, BLOCK_W, BLOCK_C, EVEN_HW)
    in_base = in_ptr + b.to(tl.int64) * s_ib + c[None, :] * s_ic
    out_base = out_ptr + b.to(tl.int64) * s_ob + c[None, :] * s_oc
    if BACKWARD:  # the pooled side is the input
        if MASKED:
            g = tl.load(in_base + o[:, None] * s_it, mask=mask, other=0.0)
        else:
            g = tl.load(in_base + o[:, None] * s_it)
        g = round_to(g.to(tl.float32) * inv[:, None], out_ptr.dtype.element_ty)
        grid_base, s_grid = out_base, s_ot
    else:
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        grid_base, s_grid = in_base, s_it
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            ptrs = grid_base + ((h0 + i) * W + (w0 + j))[:, None] * s_grid
            m = _offset_mask(mask, h0, w0, i, j, H, W, EVEN_HW)
            if BACKWARD and EVEN_HW and not MASKED:
                tl.store(ptrs, g)
            elif BACKWARD:
                tl.store(ptrs, g, mask=m)
            elif EVEN_HW and not MASKED:
                acc += tl.load(ptrs).to(tl.float32)
            else:
                acc += tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
    if not BACKWARD:  # the pooled side is the output
        out = round_to(acc * inv[:, None], out_ptr.dtype.element_ty)
        if MASKED:
            tl.store(out_base + o[:, None] * s_ot, out, mask=mask)
        else:
            tl.store(out_base + o[:, None] * s_ot, out)


def _launch_args(B: int, H: int, W: int, C: int, k: int, elem_bytes: int) -> tuple[int, tuple, dict]:
    """(Wo, grid, constexpr/launch kwargs) of one patch_pool launch."""
    Ho, Wo = triton.cdiv(H, k), triton.cdiv(W, k)
    block_w, block_c, warps = _launch.pool_settings(C, Wo, elem_bytes)
    grid = (B * Ho, triton.cdiv(Wo, block_w), triton.cdiv(C, block_c))
    even_hw = H % k == 0 and W % k == 0
    masked = Wo % block_w != 0 or C % block_c != 0
    meta = dict(K=k, BLOCK_W=block_w, BLOCK_C=block_c, EVEN_HW=even_hw, MASKED=masked, num_warps=warps)
    return Wo, grid, meta


@on_tensor_device
def patch_pool_fwd(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """x (B, H*W, C), any strides -> y (B, ceil(H/k)*ceil(W/k), C) in x.dtype (fp32 accumulation)."""
    B, T, C = x.shape
    assert T == H * W and k >= 1, (x.shape, H, W, k)
    Wo, grid, meta = _launch_args(B, H, W, C, k, x.element_size())
    y = torch.empty((B, triton.cdiv(H, k) * Wo, C), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _patch_pool_kernel[grid](x, y, H, W, Wo, C, *x.stride(), *y.stride(), BACKWARD=False, **meta)
    return y


@on_tensor_device
def patch_pool_bwd(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    """grad_y (B, ceil(H/k)*ceil(W/k), C), any strides -> grad_x (B, H*W, C) in grad_y.dtype."""
    B, To, C = grad_y.shape
    Wo, grid, meta = _launch_args(B, H, W, C, k, grad_y.element_size())
    assert To == triton.cdiv(H, k) * Wo and k >= 1, (grad_y.shape, H, W, k)
    dx = torch.empty((B, H * W, C), dtype=grad_y.dtype, device=grad_y.device)
    if dx.numel() == 0:
        return dx
    # Every token belongs to exactly one cell, so the kernel writes every element of dx.
    _patch_pool_kernel[grid](grad_y, dx, H, W, Wo, C, *grad_y.stride(), *dx.stride(), BACKWARD=True, **meta)
    return dx
