"""One tiled GEMM with fused prologue/epilogues, shared by ian_projection and ce_mse.

c = epilogue(a @ prologue(b)) with a (M, K), b (K, N), c (M, N) at any strides (transposes are
free: pass `w.t()`), 16-bit or fp32 operands, fp32 accumulation. Epilogues:

* "none"      c = acc, rounded to c's dtype (fp32 c keeps the exact fp32 result);
* "bias_gelu" z = acc + bias[n]; c = GELU_erf(z); aux = z when given (the GELU input, saved for
              the backward);
* "gelu_grad" c = acc * GELU'(aux), and the fp32 column sums of that product per M tile into
              `part` (M tiles x N; the bias gradient without an fp32 copy of c);
* "acc"       c += acc, c fp32 (weight gradients accumulated over token chunks).

The tile of each call is `_launch.gemm_config(M, N, K, dtype, epilogue)`: fixed per shape, so the
result is the same on every run and rank (no timing autotune).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from mage_fast.kernels import _launch
from mage_fast.kernels._launch import round_to

_EPI = {"none": 0, "bias_gelu": 1, "gelu_grad": 2, "acc": 3}


@triton.jit
def _gelu(z):
    """Exact (erf) GELU in fp32."""
    return 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))


@triton.jit
def _gelu_grad(z):
    """d/dz GELU_erf(z) = Φ(z) + z φ(z), fp32."""
    return 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327


@triton.jit
def _gemm_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, aux_ptr, part_ptr,
    M, N, K,
    s_am, s_ak, s_bk, s_bn, s_cm, s_cn, s_xm, s_xn,
    EPI: tl.constexpr, WRITE_AUX: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped tile order: GROUP_M row tiles share each column tile of b while it sits in L2.
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    mask_n = rn < N
    rm64 = rm.to(tl.int64)  # row offsets of large operands (W is V x H) overflow int32
    rn64 = rn.to(tl.int64)
    a_ptrs = a_ptr + rm64[:, None] * s_am + rk[None, :] * s_ak
    b_ptrs = b_ptr + rk[:, None] * s_bk + rn64[None, :] * s_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + rk) < K
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PREC)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk

    mask = mask_m[:, None] & mask_n[None, :]
    c_ptrs = c_ptr + rm64[:, None] * s_cm + rn64[None, :] * s_cn
    if EPI == 1:
        z = acc + tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if WRITE_AUX:
            x_ptrs = aux_ptr + rm64[:, None] * s_xm + rn64[None, :] * s_xn
            tl.store(x_ptrs, round_to(z, aux_ptr.dtype.element_ty), mask=mask)
        out = _gelu(z)
    elif EPI == 2:
        x_ptrs = aux_ptr + rm64[:, None] * s_xm + rn64[None, :] * s_xn
        z = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        out = tl.where(mask, acc * _gelu_grad(z), 0.0)
        tl.store(part_ptr + pid_m.to(tl.int64) * N + rn, tl.sum(out, axis=0), mask=mask_n)
    elif EPI == 3:
        out = acc + tl.load(c_ptrs, mask=mask, other=0.0)
    else:
        out = acc
    tl.store(c_ptrs, round_to(out, c_ptr.dtype.element_ty), mask=mask)


def part_rows(m: int) -> int:
    """Rows of the `part` buffer of the "gelu_grad" epilogue for M = m (any BLOCK_M of the tiles)."""
    return triton.cdiv(m, _launch.GEMM_MIN_BLOCK_M)


@_launch.on_tensor_device
def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    out: torch.Tensor,
    epilogue: str = "none",
    bias: torch.Tensor | None = None,
    aux: torch.Tensor | None = None,
    part: torch.Tensor | None = None,
) -> torch.Tensor:
    """out (M, N) <- epilogue(a (M, K) @ b (K, N)); see the module docstring.

    `aux` (M, N): written by "bias_gelu" (optional), read by "gelu_grad". `part`: fp32
    (part_rows(M), N) zeros, filled by "gelu_grad" (sum it over dim 0 for the column sums).
    """
    M, K = a.shape
    N = b.shape[1]
    assert b.shape[0] == K and tuple(out.shape) == (M, N), (a.shape, b.shape, out.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    epi = _EPI[epilogue]
    if epi == 1:
        assert bias is not None and bias.shape == (N,)
    if epi == 2:
        assert aux is not None and part is not None and part.dtype == torch.float32
        assert part.shape == (part_rows(M), N) and part.is_contiguous()
    if epi == 3:
        assert out.dtype == torch.float32
    if M == 0 or N == 0:
        return out
    if K == 0:  # nothing to accumulate: the epilogue of a zero product
        if epi == 3:
            return out
        acc = torch.zeros((M, N), dtype=torch.float32, device=out.device)
        z = acc + bias.float() if epi == 1 else acc
        if epi == 1 and aux is not None:
            aux.copy_(z)
        out.copy_(torch.nn.functional.gelu(z) if epi == 1 else z)
        return out
    xs = aux if aux is not None else out
    part = part if part is not None else out  # unread unless "gelu_grad"
    cfg = _launch.gemm_config(M, N, K, a.dtype, epilogue)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    _gemm_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        a, b, out, bias if bias is not None else out, xs, part, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        xs.stride(0), xs.stride(1),
        EPI=epi, WRITE_AUX=aux is not None and epi == 1, DOT_F32=_launch.DOT_F32, PREC=_launch.dot_precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs,
    )  # fmt: skip
    return out
