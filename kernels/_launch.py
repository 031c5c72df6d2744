"""Launch settings of every Triton kernel of mage-fast, in one place.

Block sizes, warps and GEMM tiles come from here so that tuning on the GPU edits one file.
Portability rules (Triton 3.6 on the GPU image to 3.9):

* `INTERPRET`: whether kernels were decorated for the interpreter (`TRITON_INTERPRET=1` is read
  when `@triton.jit` runs, i.e. when `mage_fast.kernels` is first imported, not at launch).
* `DOT_F32`: under the interpreter `tl.dot` on bf16/fp16 operands returns garbage (bf16 is held
  as uint16 in numpy), so kernels widen their operands to fp32 first. The products of 16-bit
  values are exact in fp32, so this is the GPU's numerics (16-bit operands, fp32 accumulation).
* `dot_precision`: fp32 GEMMs follow torch's `float32_matmul_precision` ("highest": exact fp32,
  as torch's own matmul by default; else TF32). Ignored for 16-bit operands.
* Deterministic launches: every kernel's configuration is a fixed function of the shape and
  dtype (`gemm_config`, the `*_settings`), never a per-process timing autotune, so every run and
  every rank computes the same bits, and no timing run touches (or clones) an output.
* `on_tensor_device`: launchers run under the device of their tensors (`torch.cuda.device`):
  Triton launches on the *current* device, and a `cuda:1` tensor launched with device 0 current
  is an illegal memory access.
* no `tl.make_block_ptr` anywhere (gone in 3.9): plain pointer arithmetic.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl


@triton.jit
def _probe_kernel():
    pass


# The interpreter replaces @triton.jit functions by InterpretedFunction: the most robust test
# across versions (the knob moved between triton.knobs and environment reads).
INTERPRET: bool = type(_probe_kernel).__name__ == "InterpretedFunction"
DOT_F32: bool = INTERPRET


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return triton.next_power_of_2(max(int(n), 1))


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` of tl.dot for operands of `dtype`."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def tl_dtype(dtype: torch.dtype) -> tl.dtype:
    """The Triton dtype of a torch float dtype."""
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


F = TypeVar("F", bound=Callable)


def device_of(*args: object) -> torch.device | None:
    """The device of the first tensor among `args`."""
    return next((a.device for a in args if isinstance(a, torch.Tensor)), None)


def on_tensor_device(fn: F) -> F:
    """Run launcher `fn` with its first tensor argument's CUDA device current (no-op off CUDA)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        dev = device_of(*args, *kwargs.values())
        guard = torch.cuda.device(dev) if dev is not None and dev.type == "cuda" else contextlib.nullcontext()
        with guard:
            return fn(*args, **kwargs)

    return run  # type: ignore[return-value]


# ---- GEMM -------------------------------------------------------------------------------------
# Smallest BLOCK_M that gemm_config() picks: buffers indexed by M tile (column partial sums) are
# sized with it, whatever tile a shape gets.
GEMM_MIN_BLOCK_M = 32 if INTERPRET else 64
EPILOGUES: tuple[str, ...] = ("none", "bias_gelu", "gelu_grad", "acc")


def _cfg(m: int, n: int, k: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=warps, num_stages=stages)


# The tiles gemm_config() chooses from, by name (the sm_90 compile report walks all of them).
# "wide": large 16-bit GEMMs with a plain epilogue (128x256, 3 stages: 144 KiB of shared memory);
# "square": 16-bit GEMMs with an elementwise epilogue (bias+GELU, GELU' + column sums) that keeps
# more live registers per output; "small": M or N below 128; "fp32": fp32 operands (4-byte tiles).
GEMM_TILES: dict[str, triton.Config] = {
    "wide": _cfg(128, 256, 64, 8, 3),
    "square": _cfg(128, 128, 64, 8, 4),
    "small": _cfg(64, 64, 64, 4, 3),
    "fp32": _cfg(64, 64, 32, 4, 3),
}
INTERPRET_TILE = triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)


def gemm_tile_name(m: int, n: int, k: int, dtype: torch.dtype, epilogue: str) -> str:
    """Name of the GEMM_TILES entry that a (m, n, k) GEMM with `epilogue` runs with."""
    if dtype == torch.float32:
        return "fp32"
    if m < 128 or n < 128:
        return "small"
    if epilogue in ("bias_gelu", "gelu_grad") or n < 256:
        return "square"
    return "wide"


def gemm_config(m: int, n: int, k: int, dtype: torch.dtype, epilogue: str) -> triton.Config:
    """The fixed launch configuration of the shared GEMM for this shape, dtype and epilogue.
    Interpreter: 32^3 tiles, small enough that test shapes (< 64) walk several M, N and K tiles."""
    if INTERPRET:
        return INTERPRET_TILE
    return GEMM_TILES[gemm_tile_name(m, n, k, dtype, epilogue)]


# ---- row kernels (LayerNorm, cross-entropy) ---------------------------------------------------
def row_warps(block: int) -> int:
    """Warps of a one-row-per-program kernel over `block` columns."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def ln_settings(d: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the LayerNorm row kernels: the whole row in one tile."""
    block = next_pow2(d)
    return block, row_warps(block)


def ln_bwd_programs(n_rows: int, device: torch.device) -> int:
    """Programs of the LayerNorm backward: each walks a contiguous run of rows and writes one row of
    fp32 partial sums for dγ/dβ/db2 (deterministic; summed by torch afterwards)."""
    if INTERPRET or device.type != "cuda":
        return max(1, min(n_rows, 4))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_rows, 4 * sms))


def ce_settings(v: int) -> tuple[int, int]:
    """(BLOCK_V, num_warps) of the cross-entropy row kernel, which walks the vocabulary in tiles
    with an online log-sum-exp. Interpreter: 32, so small test vocabularies take several tiles."""
    if INTERPRET:
        return 32, 4
    block = min(next_pow2(v), 4096)
    return block, row_warps(block)


def mse_settings(d: int) -> tuple[int, int]:
    """(BLOCK_D, num_warps) of the MSE row kernel (one image vector per program, tiles over D)."""
    block = min(next_pow2(d), 32 if INTERPRET else 2048)
    return block, row_warps(block)


# ---- patch pooling ----------------------------------------------------------------------------
def pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap that divides n (>= 1)."""
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d


def pool_settings(c: int, wo: int, elem_bytes: int, interpret: bool = INTERPRET) -> tuple[int, int, int]:
    """(BLOCK_W, BLOCK_C, num_warps) of patch_pool: a program covers BLOCK_W output cells of one
    output row and BLOCK_C channels, about 4 KiB of output (interpreter: small tiles, so test
    shapes walk several). Both block sizes divide their extent where a power of two does, so no
    lane is masked off; 16 bytes per thread along C (vectorised loads). `interpret=False` gives
    the GPU's choice wherever this runs (the traffic model)."""
    vec = max(1, 16 // elem_bytes)
    cap_w = 4 if interpret else 8
    block_w = pow2_divisor(wo, cap_w)
    if interpret and block_w == 1:  # the interpreter pays per program: fewer, masked ones
        block_w = min(next_pow2(wo), cap_w)
    cap_c = 64 if interpret else max(vec, (4096 // elem_bytes) // block_w)
    block_c = pow2_divisor(c, cap_c)
    if block_c < min(vec, next_pow2(c), cap_c) or (interpret and block_c < 16):  # mask the tail instead
        block_c = min(next_pow2(c), cap_c)
    warps = max(1, min(8, block_w * block_c * elem_bytes // (16 * 32)))
    return block_w, block_c, warps


# ---- rounding ---------------------------------------------------------------------------------
# The interpreter (3.8) converts fp32 -> bf16 by truncation (round toward zero), not round-to-
# nearest-even as the GPU and torch do: a biased error that compounds through a GEMM chain. Kernels
# round with `round_to`, which does RTNE by hand under the interpreter and is a plain cast on GPU.
FIX_BF16_ROUNDING = tl.constexpr(INTERPRET)


@triton.jit
def round_to(x, dtype: tl.constexpr):
    """x cast to `dtype` with round-to-nearest-even (see FIX_BF16_ROUNDING)."""
    if FIX_BF16_ROUNDING:
        if dtype == tl.bfloat16:
            u = x.to(tl.float32).to(tl.uint32, bitcast=True)
            u = u + 0x7FFF + ((u >> 16) & 1)
            return (u >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            return x.to(dtype)
    else:
        return x.to(dtype)
