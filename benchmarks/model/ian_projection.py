"""Traffic/FLOP model of ian_projection's Triton path at C=1024, D=4096, 36,864 tokens (bf16).

Reads the kernels' real launch choices: `_launch.gemm_config` (the tile of each GEMM, hence how
often a GEMM prologue would re-evaluate an operand: once per M tile) and the LayerNorm settings.
HBM bytes assume L2 keeps a tile group's operands (each operand read once, outputs written once);
GELU costs GELU_CUDA_FLOPS CUDA-core FLOPs (the erf polynomial and the products) and one SFU op
per evaluation.

Rows: forward, backward, and dW2 = dz2^T GELU(z1) on its own: as built (GELU once per element in
the LayerNorm backward pass, then a plain GEMM) and, for comparison, with GELU recomputed in the
GEMM's operand prologue (once per M tile, D / BLOCK_M times per element).
"""

from __future__ import annotations

import torch
from mage_fast.kernels import _launch

from benchmarks.model.roofline import Device, Row

OP = "ian_projection"
N, C, D = 36864, 1024, 4096
E = 2  # bytes per bf16 element
GELU_CUDA_FLOPS = 24  # erf polynomial (~18 FMA-equivalents) + 0.5 z (1 + .) per evaluation
LN_CUDA_FLOPS = 12  # per element of a LayerNorm row pass (sums, centring, scaling)
SHAPE = f"N={N} C={C} D={D} bf16"


def gemm(m: int, n: int, k: int, epilogue: str = "none", out_bytes: int = E) -> Row:
    """One GEMM (m, n, k): tensor-core FLOPs, operands read once, the output written once."""
    flops = 2.0 * m * n * k
    return Row(OP, "triton", epilogue, SHAPE, bytes=(m * k + k * n) * E + m * n * out_bytes, tc_flops=flops)


def m_tiles(m: int, n: int, k: int, epilogue: str = "none") -> int:
    """How many M tiles the kernel's real tile gives a (m, n, k) GEMM."""
    cfg = _launch.GEMM_TILES[_launch.gemm_tile_name(m, n, k, torch.bfloat16, epilogue)]  # the GPU's tile
    return -(-m // cfg.kwargs["BLOCK_M"])


def _sum(phase: str, parts: list[Row], impl: str = "triton", note: str = "") -> Row:
    return Row(OP, impl, phase, SHAPE, bytes=sum(p.bytes for p in parts), tc_flops=sum(p.tc_flops for p in parts),
               cuda_flops=sum(p.cuda_flops for p in parts), sfu_ops=sum(p.sfu_ops for p in parts), note=note)  # fmt: skip


def dw2_rows() -> list[Row]:
    """dW2 (D, D) = dz2^T (D, N) @ GELU(z1) (N, D): as built and with the GELU in the prologue."""
    nd = float(N * D)
    gelu_pass = Row(OP, "triton", "gelu", SHAPE, bytes=2 * nd * E, cuda_flops=nd * GELU_CUDA_FLOPS, sfu_ops=nd)
    built = _sum("dW2", [gelu_pass, gemm(D, D, N)], note="GELU(z1) once, in the LayerNorm backward pass")
    reps = m_tiles(D, D, N)
    pro = gemm(D, D, N)
    pro.bytes -= nd * E  # reads z1 instead of h: one N x D pass fewer
    prologue = Row(OP, "triton-prologue", "dW2", SHAPE, bytes=pro.bytes, tc_flops=pro.tc_flops,
                   cuda_flops=nd * reps * GELU_CUDA_FLOPS, sfu_ops=nd * reps,
                   note=f"GELU recomputed per M tile: {reps}x per element")  # fmt: skip
    return [built, prologue]


def forward_row() -> Row:
    nd = float(N * D)
    g1 = gemm(N, D, C, "bias_gelu")
    g1.bytes += nd * E  # z1 saved for the backward
    g1.cuda_flops, g1.sfu_ops = nd * GELU_CUDA_FLOPS, nd
    g2 = gemm(N, D, D, out_bytes=4)  # z2 in fp32
    ln = Row(OP, "triton", "ln", SHAPE, bytes=nd * 4 + 2 * nd * E + N * 4, cuda_flops=nd * LN_CUDA_FLOPS)
    return _sum("forward", [g1, g2, ln])


def backward_row() -> Row:
    nd = float(N * D)
    ln = Row(OP, "triton", "ln_bwd", SHAPE, bytes=3 * nd * E + nd * E, cuda_flops=nd * LN_CUDA_FLOPS)
    dw2 = dw2_rows()[0]
    dz1 = gemm(N, D, D, "gelu_grad")
    dz1.bytes += nd * E  # reads z1 for GELU'
    dz1.cuda_flops, dz1.sfu_ops = nd * (GELU_CUDA_FLOPS + 8), 2 * nd  # erf and exp per element
    return _sum("backward", [ln, dw2, dz1, gemm(D, C, N), gemm(N, C, D)])


def rows(dev: Device) -> list[Row]:
    """The model's rows for device class `dev` (the counts do not depend on it; the times do)."""
    return [forward_row(), backward_row(), *dw2_rows()]
