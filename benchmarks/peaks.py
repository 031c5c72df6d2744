"""Roofline ceilings measured in the same run, and each measurement's share of them.

Peaks: a large device copy (bytes read + written per second) and a large matmul in the
benchmark's dtype (bf16 on GPUs; fp32 on CPUs without a bf16 matmul unit, where torch's bf16
matmul runs far below its fp32 one and would be no ceiling at all; benchmarks/NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import common


@dataclass
class Peaks:
    """Ceilings measured in this run: copy bandwidth (read + write, GB/s) and matmul TFLOP/s."""

    gbps: float
    tflops: float
    matmul_dtype: str


def measure_peaks(device: torch.device, dtype: torch.dtype, small: bool = False) -> Peaks:
    """Best of a few reps of a large copy and a large square matmul (`small`: quick, for smoke)."""
    if device.type == "cuda":
        n_copy, n_mm, reps = 2**28, 8192, 10  # 1 GiB fp32 copied; 8192^3 matmul
        mm_dtype = dtype
    else:
        n_copy, n_mm, reps = 2**26, 2048, 3  # 256 MiB; 2048^3
        # CPUs without bf16 matmul units run torch's bf16 matmul far below fp32: no ceiling.
        mm_dtype = torch.float32 if dtype == torch.bfloat16 and not _cpu_has_bf16() else dtype
    if small:
        n_copy, n_mm, reps = 2**22, 512, 2
    copy_s = _best_s(lambda: _copier(n_copy, device), reps, device)
    mm_s = _best_s(lambda: _matmuler(n_mm, mm_dtype, device), reps, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the 2+ GiB back before the measured children start
    return Peaks(
        gbps=2 * n_copy * 4 / copy_s / 1e9,
        tflops=2 * n_mm**3 / mm_s / 1e12,
        matmul_dtype=str(mm_dtype).replace("torch.", ""),
    )


def _copier(n: int, device: torch.device) -> Callable[[], object]:
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _matmuler(n: int, dtype: torch.dtype, device: torch.device) -> Callable[[], object]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def _best_s(make: Callable[[], Callable[[], object]], reps: int, device: torch.device) -> float:
    """Fastest of 1 + reps calls (the first warms up), in seconds; the buffers die with `fn`."""
    fn = make()
    return min(common.timed(fn, device) for _ in range(reps + 1)) / 1e3


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def roofline(flops: float, nbytes: float, ms: float | None, bound: str, peaks: Peaks | None) -> dict:
    """Achieved TFLOP/s and GB/s for one measurement and its percentage of the bounding peak."""
    out: dict = {"flops": int(flops), "bytes": int(nbytes), "bound": bound}
    if peaks is not None:
        out.update(peak_tflops=round(peaks.tflops, 4), peak_gbps=round(peaks.gbps, 2))
    if not ms or ms <= 0:
        return out
    s = ms / 1e3
    out["tflops"] = round(flops / s / 1e12, 5) if flops else ""
    out["gbps"] = round(nbytes / s / 1e9, 3) if nbytes else ""
    if peaks is not None:
        achieved, peak = (flops / s / 1e12, peaks.tflops) if bound == "compute" else (nbytes / s / 1e9, peaks.gbps)
        if achieved and peak:
            out["pct_peak"] = round(100.0 * achieved / peak, 2)
    return out
