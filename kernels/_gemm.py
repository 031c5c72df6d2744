"""One tiled GEMM with fused prologue/epilogues, shared by ian_projection and ce_mse.

c = epilogue(a @ prologue(b)) with a (M, K), b (K, N), c (M, N) at any strides (transposes are
free: pass `w.t()`), 16-bit or fp32 operands, fp32 accumulation. Epilogues:

* "none"      c = acc, rounded to c's dtype (fp32 c keeps the exact fp32 result);
* "bias_gelu" z = acc + bias[n]; c = GELU_erf(z); aux = z when given (the GELU input, saved for
              the backward);
* "gelu_grad" c = acc * GELU'(aux), and the fp32 column sums of that product per M tile into
              `part` (M tiles x N; the bias gradient without an fp32 copy of c);
* "acc"       c = aux + acc, aux fp32 (default: c itself, i.e. c += acc in place): weight
              gradients accumulated over token chunks; the last chunk passes the fp32 running
              sum as aux and writes c in the output dtype (no separate rounding pass).

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
    a_ptr,
    b_ptr,
    c_ptr,
    bias_ptr,
    aux_ptr,
    part_ptr,
    M,
    N,
    K,
    s_am,
    s_ak,
    s_bk,
    s_bn,
    s_cm,
    s_cn,
    s_xm,
    s_xn,
    EPI: tl.constexpr,
    WRITE_AUX: tl.constexpr,
    DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < M
    mask_n = rn < N
    rm64 = rm.to(tl.int64)  # row offsets of large operands (W is V x H) overflow int32
    rn64 = rn.to(tl.int64)
    acc = _dot_tiles(
        a_ptr, b_ptr, rm64, rn64, mask_m, mask_n, K, s_am, s_ak, s_bk, s_bn, DOT_F32, PREC, BLOCK_M, BLOCK_N, BLOCK_K
    )
    mask = mask_m[:, None] & mask_n[None, :]
    c_ptrs = c_ptr + rm64[:, None] * s_cm + rn64[None, :] * s_cn
    x_ptrs = aux_ptr + rm64[:, None] * s_xm + rn64[None, :] * s_xn
    if EPI == 1:
        z = acc + tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if WRITE_AUX:
            tl.store(x_ptrs, round_to(z, aux_ptr.dtype.element_ty), mask=mask)
        out = _gelu(z)
    elif EPI == 2:
        z = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        out = tl.where(mask, acc * _gelu_grad(z), 0.0)
        tl.store(part_ptr + pid_m.to(tl.int64) * N + rn, tl.sum(out, axis=0), mask=mask_n)
    elif EPI == 3:
        out = acc + tl.load(x_ptrs, mask=mask, other=0.0)
    else:
        out = acc
    tl.store(c_ptrs, round_to(out, c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row tile, column tile), in grouped order: GROUP_M row tiles share each
    column tile of b while it sits in L2."""
    pid = tl.program_id(0)
    width = GROUP_M * tl.cdiv(N, BLOCK_N)
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


@triton.jit
def _dot_tiles(
    a_ptr,
    b_ptr,
    rm64,
    rn64,
    mask_m,
    mask_n,
    K,
    s_am,
    s_ak,
    s_bk,
    s_bn,
    DOT_F32: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The fp32 (BLOCK_M, BLOCK_N) tile of a @ b at rows rm64, columns rn64, over K in BLOCK_K steps."""
    rk = tl.arange(0, BLOCK_K)
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
    return acc


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

    `aux` (M, N): written by "bias_gelu" (optional), read by "gelu_grad" and "acc" (fp32; for
    "acc" it defaults to `out`). `part`: fp32 (part_rows(M), N) zeros, filled by "gelu_grad" (sum
    it over dim 0 for the column sums).
    """
    M, K = a.shape
    N = b.shape[1]
    epi = _EPI[epilogue]
    _check(a, b, out, epi, bias, aux, part)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return _zero_k(out, epi, bias, aux)
    xs = aux if aux is not None else out
    part = part if part is not None else out  # unread unless "gelu_grad"
    cfg = _launch.gemm_config(M, N, K, a.dtype, epilogue)
    bm, bn = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]
    _gemm_kernel[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](
        a, b, out, bias if bias is not None else out, xs, part, M, N, K,
        *a.stride(), *b.stride(), *out.stride(), *xs.stride(),
        EPI=epi, WRITE_AUX=aux is not None and epi == 1,
        DOT_F32=_launch.DOT_F32, PREC=_launch.dot_precision(a.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.kwargs,
    )  # fmt: skip
    return out


def _check(a, b, out, epi: int, bias, aux, part) -> None:
    """The shapes and dtypes `matmul` relies on (its callers are ours: asserts, not user errors)."""
    M, K = a.shape
    N = b.shape[1]
    assert b.shape[0] == K and tuple(out.shape) == (M, N), (a.shape, b.shape, out.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if epi == 1:
        assert bias is not None and bias.shape == (N,)
    if epi == 2:
        assert aux is not None and part is not None and part.dtype == torch.float32
        assert part.shape == (part_rows(M), N) and part.is_contiguous()
    if epi == 3:
        acc_in = out if aux is None else aux
        assert acc_in.dtype == torch.float32 and tuple(acc_in.shape) == (M, N)


def _zero_k(out: torch.Tensor, epi: int, bias, aux) -> torch.Tensor:
    """K == 0: nothing to accumulate, the epilogue of a zero product."""
    if epi == 3:
        return out
    z = torch.zeros(out.shape, dtype=torch.float32, device=out.device)
    if epi == 1:
        z = z + bias.float()
        if aux is not None:
            aux.copy_(z)
    out.copy_(torch.nn.functional.gelu(z) if epi == 1 else z)
    return out
