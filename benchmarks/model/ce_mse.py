"""Traffic and FLOP model of ce_mse at N = 16384, H = 4096, V in {128256, 32000}, bf16.

Each implementation is a sequence of kernels per chunk of tokens; the chunks come from the op's
own planner (`mage_fast.ops.ce_mse.plan`, read at call time, so a planner change changes the
prediction). Kernels run one after another, so the predicted time of fwd+bwd is the sum over
kernels of each kernel's roofline time (its slowest resource), not the roofline of the totals.
Counted per chunk of r rows (b = 2 bytes per bf16 element, acc = the grad_weight accumulator):

* logits GEMM: 2 r H V tensor-core FLOPs; the weight streamed (V H b), the chunk's hidden rows,
  the logits written (fp32, or bf16 for Liger);
* row kernel: the logits read (twice for the two-pass kernels; ATen's elementwise chain for the
  torch backend, op by op), P written in bf16; 2 exp per element;
* grad_hidden GEMM: P and the weight read again, grad_hidden written (through an fp32 temporary
  for the ATen paths);
* grad_weight GEMM: P and the (masked copy of the) hidden rows read, the accumulator read and
  written (acc = fp32: 8 V H bytes per chunk; Liger: bf16, 4 V H);
once: the accumulator zeroed and rounded to bf16, and the backward's in-place scaling of
grad_hidden and grad_weight (Liger skips it when the incoming gradient is 1, its best case).

Liger-Kernel's FLCE is modelled from its chunking rule as published (chunk = next power of two of
N / ceil(V / H)) with bf16 logits and a bf16 grad_weight updated by addmm per chunk.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from dataclasses import dataclass

import torch

from benchmarks.model.roofline import Device, Row

ce_mod = importlib.import_module("mage_fast.ops.ce_mse")
N, H = 16384, 4096
VOCABS = (128256, 32000)
DTYPE = torch.bfloat16
B = 2  # bytes per bf16 element
IMPLS = ("torch", "triton", "cuda", "liger")


@dataclass(frozen=True)
class Step:
    """One kernel of one chunk (or of the whole call): HBM bytes and work."""

    name: str
    bytes: float
    tc: float = 0.0
    cuda: float = 0.0
    sfu: float = 0.0
    gw_bytes: float = 0.0  # the part of `bytes` that is grad_weight traffic


def chunk_sizes(impl: str, dev: Device, v: int) -> list[int]:
    """Rows of each chunk: the op's planner, or Liger's rule for "liger"."""
    if impl == "liger":
        rows = triton_next_pow2(math.ceil(N / math.ceil(v / H)))
    else:
        rows = ce_mod.plan(N, H, v, DTYPE, dev.name).rows
    return [min(rows, N - s) for s in range(0, N, rows)]


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _row_bytes(impl: str) -> float:
    """Bytes per logit element moved by the row kernel(s) after the logits GEMM."""
    if impl == "torch":  # logsumexp (2 reads), sub_ + exp_ + masked_fill_ (read+write each), sum, to(bf16)
        return 2 * 4 + 3 * 8 + 4 + 4 + B
    if impl == "liger":  # bf16 logits: online pass, then the gradient written in place
        return 3 * B
    return 2 * 4 + B  # two passes over fp32 logits, P written once


def chunk_steps(impl: str, r: int, v: int) -> list[Step]:
    """The kernels of one chunk of `r` tokens."""
    w, hc, pv = v * H * B, r * H * B, r * v * B
    acc = B if impl == "liger" else 4
    logits_out = B if impl == "liger" else 4
    gh_out = r * H * (4 + 4 + B) if impl in ("torch", "cuda") else hc  # ATen: fp32 temporary, then copy
    mask_copy = 0 if impl == "liger" else 2 * hc  # ignored rows of h selected to 0
    return [
        Step("logits", w + hc + r * v * logits_out, tc=2 * r * H * v),
        Step("rows", r * v * _row_bytes(impl) + 16 * r, cuda=6 * r * v, sfu=2 * r * v),
        Step("grad_hidden", pv + w + gh_out, tc=2 * r * v * H),
        Step("grad_weight", pv + hc + mask_copy + 2 * v * H * acc, tc=2 * r * v * H, gw_bytes=2 * v * H * acc),
    ]


def once_steps(impl: str, v: int) -> list[Step]:
    """Kernels run once per call: accumulator set-up and rounding, the backward's scaling."""
    if impl == "liger":
        return [Step("gw_zero", v * H * B, gw_bytes=v * H * B)]
    return [
        Step("gw_zero", v * H * 4, gw_bytes=v * H * 4),
        Step("gw_round", v * H * (4 + B), gw_bytes=v * H * (4 + B)),
        Step("bwd_scale", 2 * N * H * B + 2 * v * H * B, cuda=N * H + v * H, gw_bytes=2 * v * H * B),
    ]


def steps(impl: str, dev: Device, v: int) -> list[tuple[Step, int, int]]:
    """(step, how many times, rows) over the whole call."""
    out = []
    for r, count in sorted(Counter(chunk_sizes(impl, dev, v)).items(), reverse=True):
        out += [(s, count, r) for s in chunk_steps(impl, r, v)]
    return out + [(s, 1, 0) for s in once_steps(impl, v)]


def _row(impl: str, v: int, step: Step, count: int, r: int) -> Row:
    phase = f"step:{step.name}" + (f"[{count}x{r}]" if r else "")
    gw = f"grad_weight {count * step.gw_bytes / 1e9:.2f} GB"
    work = (count * step.tc, count * step.cuda, count * step.sfu)
    return Row("ce_mse", impl, phase, f"N={N},H={H},V={v}", count * step.bytes, *work, note=gw)


def rows(dev: Device) -> list[Row]:
    """Per implementation and vocabulary, one row per kernel step (times add: see the docstring)."""
    return [_row(impl, v, s, c, r) for v in VOCABS for impl in IMPLS for s, c, r in steps(impl, dev, v)]


def predicted_ms(impl: str, dev: Device, v: int) -> float:
    """fwd+bwd: the sum of each kernel's roofline time."""
    return sum(_row(impl, v, s, c, r).predicted_ms(dev) for s, c, r in steps(impl, dev, v))


def roofline_ms(dev: Device, v: int) -> float:
    """The FLOP roofline of fwd+bwd: 6 N H V tensor-core FLOPs at peak."""
    return 6 * N * H * v / (dev.tc_tflops_bf16 * 1e12) * 1e3


def grad_weight_bytes(impl: str, dev: Device, v: int) -> float:
    """HBM bytes of grad_weight traffic (zero, read-modify-writes, rounding, scaling)."""
    return sum(c * s.gw_bytes for s, c, _ in steps(impl, dev, v))
