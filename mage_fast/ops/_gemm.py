"""Matmul with fp32 output for the torch backends (fp32 accumulation for every input dtype).

Convention of the torch backends (the kernels' template): GEMM operands are rounded to the input
dtype (as a fused kernel feeds its tensor cores), GEMM outputs and everything after are fp32.
The numerics are then the same on CPU and CUDA up to summation order.
"""

from __future__ import annotations

import torch


def mm_f32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b` (2-D) as fp32, accumulated in fp32.

    On CUDA, same-dtype bf16/fp16 operands stay low-precision (cuBLAS accumulates in fp32;
    `out_dtype` keeps the fp32 result instead of rounding it). Elsewhere (CPU has no
    `mm(out_dtype=)`) or with mixed dtypes, operands are widened exactly to fp32.
    """
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if a.is_cuda and a.dtype == b.dtype:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # torch without mm(out_dtype=): round once, then widen
            return (a @ b).float()
    return a.float() @ b.float()


def widen_off_cuda(t: torch.Tensor) -> torch.Tensor:
    """`t` widened (exactly) to fp32 off CUDA, unchanged on CUDA: for an operand reused by many
    GEMMs, so CPU upcasts it once instead of once per GEMM. Numerics are unchanged."""
    return t if t.is_cuda else t.float()
