"""ian_projection y = LN(GELU(x w1^T + b1) w2^T + b2): forward and backward launchers.

Forward (three launches; `gelu_mlp_fwd` runs 1 and 2, `bias_layernorm_fwd` 3):
  1. GEMM x w1^T with the bias + exact-GELU epilogue: h = GELU(z1) (x.dtype, GEMM 2's operand)
     and, when a backward will follow, z1 = x w1^T + b1 (x.dtype) saved;
  2. GEMM h w2^T -> z2 without bias, fp32 (N, D);
  3. `_ian_projection_ln_fwd_kernel`, one row per program: + b2, LayerNorm in fp32, y (x.dtype)
     and, for the backward, xhat (x.dtype) and rstd (fp32).
Saved: z1, xhat, rstd, the torch backend's set. GELU(z1) is recomputed in the backward instead of
stored: z1 must be kept anyway for GELU', so storing h too would hold N x D more activations from
forward to backward. Keep z1 (the GELU input) rather than recompute it from x in the backward:
recomputing saves N x D activations but costs one more GEMM, 2NCD on top of 6NCD + 6ND^2 FLOPs:
+6.7 % at C=1024, D=4096, +12 % at C=1152, D=2048, on GEMMs that bound the op.

Backward (`linear_layernorm_bwd` runs 1 and 2, `linear_gelu_bwd` 3 to 5):
  1. `_ian_projection_ln_bwd_kernel`: dz2 (x.dtype) from dy, xhat, rstd, ln_w, all fp32 inside;
     dγ, dβ and db2 as fp32 partial sums, one row per program, summed by torch (deterministic);
     in the same pass over the rows, h = GELU(z1) (x.dtype) when dw2 is needed: one erf per
     element. (Recomputing GELU in the dw2 GEMM's operand load instead would evaluate it once per
     M tile, D / BLOCK_M = 32 times per element at D = 4096: CUDA-core/SFU bound, not tensor-core.)
  2. dw2 = dz2^T h (GEMM);
  3. dz1 = (dz2 w2) * GELU'(z1), and db1 from fp32 column sums in the same epilogue (GELU' once
     per element: each output element is produced by one program);
  4. dw1 = dz1^T x;  5. dx = dz1 w1. GEMMs whose result nobody needs are skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mage_fast.kernels import _launch
from mage_fast.kernels._gemm import _gelu, matmul, part_rows
from mage_fast.kernels._launch import on_tensor_device, round_to


@triton.jit
def _ian_projection_ln_fwd_kernel(
    z_ptr,
    b2_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    xhat_ptr,
    rstd_ptr,
    D,
    eps,
    s_z,
    s_y,
    s_x,
    SAVE: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    z = tl.load(z_ptr + row * s_z + cols, mask=m, other=0.0) + tl.load(b2_ptr + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(z, axis=0) / D
    zc = tl.where(m, z - mean, 0.0)
    var = tl.sum(zc * zc, axis=0) / D
    rstd = 1.0 / tl.sqrt(var + eps)
    xhat = zc * rstd
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * s_y + cols, round_to(xhat * w + b, y_ptr.dtype.element_ty), mask=m)
    if SAVE:
        tl.store(xhat_ptr + row * s_x + cols, round_to(xhat, xhat_ptr.dtype.element_ty), mask=m)
        tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ian_projection_ln_bwd_kernel(
    dy_ptr,
    xhat_ptr,
    rstd_ptr,
    w_ptr,
    dz_ptr,
    part_ptr,
    z1_ptr,
    h_ptr,
    N,
    D,
    rows_per_prog,
    s_dy,
    s_dyc,
    s_x,
    s_dz,
    s_z1,
    s_h,
    NEED_DZ: tl.constexpr,
    NEED_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    d_w = tl.zeros((BLOCK_D,), dtype=tl.float32)
    d_b = tl.zeros((BLOCK_D,), dtype=tl.float32)
    d_b2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = pid.to(tl.int64) * rows_per_prog  # int64 loop variable: row offsets overflow int32
    end = tl.minimum(start + rows_per_prog, N)
    for row in range(start, end):
        dy = tl.load(dy_ptr + row * s_dy + cols * s_dyc, mask=m, other=0.0).to(tl.float32)
        xh = tl.load(xhat_ptr + row * s_x + cols, mask=m, other=0.0).to(tl.float32)
        d_w += dy * xh
        d_b += dy
        if NEED_DZ:
            rstd = tl.load(rstd_ptr + row)
            dxh = dy * w
            c1 = tl.sum(dxh, axis=0) / D
            c2 = tl.sum(dxh * xh, axis=0) / D
            dz = tl.where(m, rstd * (dxh - c1 - xh * c2), 0.0)
            d_b2 += dz
            tl.store(dz_ptr + row * s_dz + cols, round_to(dz, dz_ptr.dtype.element_ty), mask=m)
        if NEED_H:
            z1 = tl.load(z1_ptr + row * s_z1 + cols, mask=m, other=0.0).to(tl.float32)
            tl.store(h_ptr + row * s_h + cols, round_to(_gelu(z1), h_ptr.dtype.element_ty), mask=m)
    base = part_ptr + pid.to(tl.int64) * 3 * D
    tl.store(base + cols, d_w, mask=m)
    tl.store(base + D + cols, d_b, mask=m)
    tl.store(base + 2 * D + cols, d_b2, mask=m)


@on_tensor_device
def gelu_mlp_fwd(
    x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, save: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (N, C), w1 (D, C), b1 (D,), w2 (D, D) -> z2 = GELU(z1) w2^T (N, D) fp32 and, if `save`,
    z1 = x w1^T + b1 (N, D) in x.dtype (GEMM1 with a bias + GELU epilogue, then GEMM2); else None.
    h = GELU(z1) lives only inside: it is freed before the LayerNorm's outputs are allocated."""
    N, D = x.shape[0], w1.shape[0]
    z1 = torch.empty((N, D), dtype=x.dtype, device=x.device) if save else None
    h = torch.empty((N, D), dtype=x.dtype, device=x.device)
    matmul(x, w1.t(), h, "bias_gelu", bias=b1.contiguous(), aux=z1)  # kernels index vectors by column
    z2 = torch.empty((N, D), dtype=torch.float32, device=x.device)
    matmul(h, w2.t(), z2)
    return z2, z1


@on_tensor_device
def bias_layernorm_fwd(
    z2: torch.Tensor,
    b2: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    eps: float,
    save: bool,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """z2 (N, D) fp32, vectors (D,) -> y = LayerNorm(z2 + b2) (N, D) in `dtype` and, if `save`,
    xhat (N, D) (`dtype`) and rstd (N,) fp32; else None for those two."""
    N, D = z2.shape
    dev, dt = z2.device, dtype
    b2, ln_w, ln_b = (t.contiguous() for t in (b2, ln_w, ln_b))
    y = torch.empty((N, D), dtype=dt, device=dev)
    xhat = torch.empty((N, D), dtype=dt, device=dev) if save else None
    rstd = torch.empty((N,), dtype=torch.float32, device=dev) if save else None
    if N > 0:
        block, warps = _launch.ln_settings(D)
        _ian_projection_ln_fwd_kernel[(N,)](
            z2,
            b2,
            ln_w,
            ln_b,
            y,
            xhat if save else y,
            rstd if save else z2,
            D,
            float(eps),
            z2.stride(0),
            y.stride(0),
            xhat.stride(0) if save else 0,
            SAVE=save,
            BLOCK_D=block,
            num_warps=warps,
        )
    return y, xhat, rstd


def _ln_bwd_rows(dy, xhat, rstd, ln_w, z1, dz2, need_dz2: bool, nw2: bool):
    """The LayerNorm backward kernel: -> ((3, D) fp32 sums of dγ, dβ, db2; h = GELU(z1) or None);
    dz2 (N, D) written in place when needed."""
    N, D = xhat.shape
    progs = _launch.ln_bwd_programs(N, xhat.device)
    rows_per = triton.cdiv(max(N, 1), progs)
    part = torch.zeros((progs, 3, D), dtype=torch.float32, device=xhat.device)
    h = torch.empty_like(z1) if nw2 else None  # GELU(z1), dw2's operand
    if N > 0:
        block, warps = _launch.ln_settings(D)
        dz_out, h_out = dz2 if need_dz2 else xhat, h if nw2 else xhat
        _ian_projection_ln_bwd_kernel[(progs,)](
            dy,
            xhat,
            rstd,
            ln_w,
            dz_out,
            part,
            z1,
            h_out,
            N,
            D,
            rows_per,
            dy.stride(0),
            dy.stride(1),
            xhat.stride(0),
            dz_out.stride(0),
            z1.stride(0),
            h_out.stride(0),
            NEED_DZ=need_dz2,
            NEED_H=nw2,
            BLOCK_D=block,
            num_warps=warps,
        )
    return part.sum(0), h


def _ln_bwd_wide(dy, xhat, rstd, ln_w, z1, need_dz2: bool, nw2: bool):
    """The same results for rows wider than LN_BWD_MAX_D, where the one-row-per-program kernel
    would spill registers on sm_90: the torch formulas in fp32 (deterministic reductions)."""
    g, xh = dy.float(), xhat.float()
    dxh = g * ln_w.float()
    dz = rstd[:, None] * (dxh - dxh.mean(-1, keepdim=True) - xh * (dxh * xh).mean(-1, keepdim=True))
    sums = torch.stack([(g * xh).sum(0), g.sum(0), dz.sum(0)])
    h = torch.nn.functional.gelu(z1.float()).to(z1.dtype) if nw2 else None
    return sums, dz.to(xhat.dtype) if need_dz2 else None, h


@on_tensor_device
def linear_layernorm_bwd(
    dy: torch.Tensor,
    xhat: torch.Tensor,
    rstd: torch.Tensor,
    ln_w: torch.Tensor,
    z1: torch.Tensor,
    need_dz2: bool,
    need_dw2: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """dy (N, D) any strides, xhat (N, D), rstd (N,) fp32, ln_w (D,), z1 (N, D) -> (the (3, D) fp32
    sums of dγ, dβ and db2; dz2 (N, D) in xhat's dtype or None; dw2 = dz2^T GELU(z1) (D, D) or None)."""
    N, D = xhat.shape
    ln_w = ln_w.contiguous()
    if D > _launch.LN_BWD_MAX_D:
        sums, dz2, h = _ln_bwd_wide(dy, xhat, rstd, ln_w, z1, need_dz2, need_dw2)
    else:
        dz2 = torch.empty((N, D), dtype=xhat.dtype, device=xhat.device) if need_dz2 else None
        sums, h = _ln_bwd_rows(dy, xhat, rstd, ln_w, z1, dz2, need_dz2, need_dw2)
    dw2 = None
    if need_dw2:
        dw2 = torch.empty((D, D), dtype=z1.dtype, device=z1.device)
        matmul(dz2.t(), h, dw2)
    return sums, dz2, dw2


@on_tensor_device
def linear_gelu_bwd(
    dz2: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, z1: torch.Tensor, needs: tuple[bool, ...]
) -> tuple[torch.Tensor | None, ...]:
    """dz2 (N, D), x (N, C), w1 (D, C), w2 (D, D), z1 (N, D) -> (dx, dw1, db1) through GEMM2's input
    and the GELU, each in its input's dtype, None where `needs` (3 flags, that order) is False."""
    nx, nw1, nb1 = needs
    dx = dw1 = db1 = None
    if not (nx or nw1 or nb1):
        return dx, dw1, db1
    N, D = dz2.shape
    dz1 = torch.empty((N, D), dtype=x.dtype, device=x.device)
    pb = torch.zeros((part_rows(N), D), dtype=torch.float32, device=x.device)
    matmul(dz2, w2, dz1, "gelu_grad", aux=z1, part=pb)
    if nb1:
        db1 = pb.sum(0).to(w1.dtype)
    if nw1:
        dw1 = torch.empty_like(w1)
        matmul(dz1.t(), x, dw1)
    if nx:
        dx = torch.empty_like(x)
        matmul(dz1, w1, dx)
    return dx, dw1, db1
