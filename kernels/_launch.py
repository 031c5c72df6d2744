"""Launch settings of every Triton kernel of mage-fast, in one place.

Block sizes, warps and autotune configs come from here so that tuning on the GPU (issue 7) edits
one file. Portability rules (Triton 3.6 on the GPU image to 3.9):

* `INTERPRET`: whether kernels were decorated for the interpreter (`TRITON_INTERPRET=1` is read
  when `@triton.jit` runs, i.e. when `mage_fast.kernels` is first imported, not at launch).
* `DOT_F32`: under the interpreter `tl.dot` on bf16/fp16 operands returns garbage (bf16 is held
  as uint16 in numpy), so kernels widen their operands to fp32 first. The products of 16-bit
  values are exact in fp32, so this is the GPU's numerics (16-bit operands, fp32 accumulation).
* `dot_precision`: fp32 GEMMs follow torch's `float32_matmul_precision` ("highest": exact fp32,
  as torch's own matmul by default; else TF32). Ignored for 16-bit operands.
* `autotune`: under the interpreter, a single config (nothing to time, and the interpreter is
  slow) and a wall-clock `do_bench` (there is no active GPU driver to ask for a benchmarker).
* no `tl.make_block_ptr` anywhere (gone in 3.9): plain pointer arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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


def cpu_do_bench(fn: Callable[[], object], quantiles: Sequence[float] | None = None, reps: int = 3):
    """Wall-clock benchmark for the interpreter (same return convention as triton.testing.do_bench)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    if quantiles is None:
        return times[len(times) // 2]
    return [times[min(len(times) - 1, int(q * len(times)))] for q in quantiles]


def autotune(configs: list[triton.Config], key: list[str], keep_all: bool = False, **kw):
    """`triton.autotune` with mage-fast's rules: one config and a CPU `do_bench` under the interpreter
    (`keep_all=True` keeps every config, for the test of the do_bench path)."""
    if INTERPRET:
        return triton.autotune(configs if keep_all else configs[:1], key=key, do_bench=cpu_do_bench, **kw)
    return triton.autotune(configs, key=key, **kw)


# ---- GEMM -------------------------------------------------------------------------------------
# Smallest BLOCK_M of gemm_configs(): buffers indexed by M tile (column partial sums) are sized
# with it, whatever config the autotuner picks.
GEMM_MIN_BLOCK_M = 32 if INTERPRET else 64


def gemm_configs() -> list[triton.Config]:
    """Autotune space of the shared GEMM. Interpreter: 32^3 tiles, small enough that test shapes
    (< 64) still walk several M, N and K tiles and hit every edge mask."""
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)]
    cfg = lambda m, n, k, w, s: triton.Config(
        {"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s
    )
    # H100/H200 starting points (16-bit operands); issue 7 prunes/extends on the GPU.
    return [
        cfg(128, 256, 64, 8, 3),
        cfg(128, 128, 64, 8, 4),
        cfg(128, 128, 32, 4, 4),
        cfg(64, 128, 64, 4, 4),
        cfg(128, 64, 64, 4, 4),
        cfg(64, 64, 64, 4, 3),
    ]


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
def pool_settings(c: int, wo: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_W, BLOCK_C, num_warps) of patch_pool: a program covers BLOCK_W output cells of one
    output row and BLOCK_C channels; 16 bytes per thread along C (vectorised loads)."""
    block_c = min(next_pow2(c), 256 if elem_bytes <= 2 else 128)
    block_w = min(next_pow2(wo), 4 if INTERPRET else 8)
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


def gemm_fixed_config(m: int, n: int, k: int, dtype: torch.dtype) -> dict[str, int]:
    """A fixed GEMM config for out (m, n) = a (m, k) @ b (k, n): a pure function of the shape and
    dtype, so every process and rank runs the same tiles and sums in the same order (no timing).
    The 16-bit tile is the largest of gemm_configs() (sm_90: 147 KB of shared memory, no spills);
    fp32 and small problems take 64-wide tiles. Interpreter: gemm_configs()'s one config."""
    if INTERPRET:
        c = gemm_configs()[0]
        return {**c.kwargs, "num_warps": c.num_warps, "num_stages": 1}
    if dtype == torch.float32:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
    if m >= 128 and n >= 256 and k >= 64:
        return {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}
