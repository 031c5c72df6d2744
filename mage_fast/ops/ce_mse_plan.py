"""The chunking planner of `mage_fast::ce_mse`: how many tokens one chunk of logits holds.

Tokens are walked in chunks of `rows`; one fp32 (rows, V) logits buffer and its P (the input
dtype) exist at a time, and the loop is token-outer.

* CPU (every non-CUDA device): `rows` keeps both buffers within CHUNK_BYTES (64 MiB: 262 rows at
  V = 32000, 65 at V = 128256).
* GPU: chunk buffers within the cap (GPU_BUFFER_CAP, at most 1/16 of the device's memory), rows a
  multiple of 128 and balanced over the chunks; among the fewest chunks that fit and up to three
  more, the one whose GEMMs take the least modelled time (`_chunk_seconds`: whole waves of output
  tiles on the SMs, and the unhidden fp32 read-modify-write of grad_weight once per chunk). At
  N = 16384, H = 4096, bf16 this gives 4 chunks of 4096 rows for V = 128256 (3.15 GB of buffers)
  and one chunk for V = 32000 on h100 and h200.

The device class is `mage_fast.ops._backend.device_class`'s; a GPU class without its own figures
here (GPU_MEM_GIB, GPU_RATES) is planned with those of "gpu". Every backend takes its rows from
`plan_for`, as does the traffic model (benchmarks/model/ce_mse.py), whose fuller count agrees
with the choice (tests/benchmarks/test_model_ce_mse.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from mage_fast.ops._backend import device_class

CHUNK_BYTES: int = 64 * 2**20  # CPU: fp32 logits + P of one chunk
GPU_MEM_GIB: dict[str, float] = {"h100": 80.0, "h200": 141.0, "gpu": 24.0}
GPU_ROW_MULTIPLE = 128  # tensor-core tile height
GPU_BUFFER_CAP = 4 * 2**30  # chunk buffers at most 4 GiB, or 1/16 of the device's memory
GPU_SMS = 132  # H100 / H200 SXM; another GPU ("gpu") is planned as if it had as many
# (bf16 tensor-core FLOP/s, HBM bytes/s) per class: their ratio prices the grad_weight epilogue in
# GEMM time. H100 SXM: the bf16 GEMM rate and HBM bandwidth measured on it; H200: the same SMs
# with HBM3e. The traffic model (benchmarks/model/roofline.py) takes its rates from here.
GPU_RATES: dict[str, tuple[float, float]] = {
    "h100": (790e12, 3.0e12),
    "h200": (790e12, 4.3e12),
    "gpu": (790e12, 3.0e12),
}


@dataclass(frozen=True)
class Plan:
    """How the tokens are walked: `chunks` chunks of `rows` tokens (the last one may be shorter)."""

    rows: int
    chunks: int
    order: Literal["tokens_outer"]
    buffer_bytes: int  # fp32 logits + P (input dtype) of one chunk


def chunk_rows(n: int, v: int, budget: int | None = None) -> int:
    """CPU rule: tokens per chunk so that 2 fp32 (rows, v) buffers fit `budget` (CHUNK_BYTES)."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(1, min(n, budget // (2 * 4 * max(v, 1))))


def _waves(m: int, n: int, bm: int, bn: int) -> int:
    """Waves of (bm, bn) output tiles of an (m, n) GEMM, one tile per SM at a time."""
    return math.ceil(math.ceil(m / bm) * math.ceil(n / bn) / GPU_SMS)


def _chunk_seconds(rows: int, n: int, h: int, v: int, device_class: str) -> float:
    """Modelled time of the chunked GEMMs over `n` tokens in chunks of `rows`: whole waves of the
    kernels' tiles (128x256: logits, grad_hidden; 128x128: grad_weight) and the grad_weight
    accumulate epilogue, 8 bytes per V x H element per chunk, which no main loop hides."""
    flops, hbm = GPU_RATES.get(device_class, GPU_RATES["gpu"])
    per_sm = flops / GPU_SMS
    t = 0.0
    for s in range(0, max(n, 1), rows):
        r = min(rows, max(n, 1) - s)
        t += _waves(r, v, 128, 256) * 2 * 128 * 256 * h / per_sm  # logits, K = h
        t += _waves(r, h, 128, 256) * 2 * 128 * 256 * v / per_sm  # grad_hidden, K = v
        t += _waves(v, h, 128, 128) * 2 * 128 * 128 * r / per_sm + 8 * v * h / hbm  # grad_weight, K = r
    return t


def _gpu_rows(n: int, h: int, v: int, itemsize: int, device_class: str) -> int:
    per_row = max(v, 1) * (4 + itemsize)
    cap = min(GPU_BUFFER_CAP, GPU_MEM_GIB.get(device_class, GPU_MEM_GIB["gpu"]) * 2**30 / 16)
    most = max(GPU_ROW_MULTIPLE, int(cap // per_row) // GPU_ROW_MULTIPLE * GPU_ROW_MULTIPLE)
    fewest = math.ceil(max(n, 1) / most)
    m = GPU_ROW_MULTIPLE
    options = {min(most, math.ceil(math.ceil(max(n, 1) / c) / m) * m) for c in range(fewest, fewest + 4)}
    return min(options, key=lambda r: (_chunk_seconds(r, n, h, v, device_class), -r))


def plan(n: int, h: int, v: int, dtype: torch.dtype, device_class: str) -> Plan:
    """Chunking of `n` tokens x hidden `h` x vocabulary `v` in `dtype`: the CPU rule for class
    "cpu", else the GPU rule with `device_class`'s figures."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    if device_class == "cpu":
        rows = chunk_rows(n, v)
    else:
        rows = _gpu_rows(n, h, v, itemsize, device_class)
    chunks = math.ceil(n / rows) if n else 0
    return Plan(rows, chunks, "tokens_outer", min(rows, max(n, 1)) * v * (4 + itemsize))


def plan_for(hidden: torch.Tensor, weight: torch.Tensor) -> Plan:
    """The plan of hidden (N, H) against weight (V, H) on hidden's device; the GPU rule is for
    CUDA devices, every other device walks the CPU rule."""
    cls = device_class(hidden.device) if hidden.device.type == "cuda" else "cpu"
    return plan(hidden.shape[0], hidden.shape[1], weight.shape[0], hidden.dtype, cls)
