"""Traffic and FLOP model of ce_mse at N = 16384, H = 4096, V in {128256, 32000}, bf16.

Each implementation is a sequence of kernels per chunk of tokens; the chunks come from the op's
own planner (`mage_fast.ops.ce_mse_plan.plan`, read at call time, so a planner change changes the
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
once: the accumulator zeroed and rounded to bf16 (torch, cuda; the Triton kernels store the
first chunk and write the last in the output dtype instead), and the backward's in-place scaling
of grad_hidden and grad_weight (Liger skips it when the incoming gradient is 1, its best case).

GEMMs are not free of shape: each runs in output tiles, one CTA per SM at a time (the Triton
tiles of `_launch.gemm_config`: 128x256 for the logits and grad_hidden GEMMs, 128x128 for the
accumulating grad_weight GEMM; cuBLAS, for torch/cuda/liger, modelled with 128x256 tiles), so
its tensor-core time is that of whole waves: ceil(tiles / SMs) waves for tiles / SMs of work
(grad_hidden at 2432 rows: 19 x 16 = 304 tiles on 132 SMs, 3 waves for 2.3). The weight is
streamed once per group of GROUP_M (8) row tiles (L2 holds the group's rows), so the logits and
grad_hidden GEMMs read W ceil(row tiles / 8) times. The Triton grad_weight GEMM's accumulate
epilogue (read and write 128x128 fp32 per tile) runs after the tile's main loop with nothing to
overlap it (one CTA per SM): its bytes add to the time (Row.serial_bytes); cuBLAS's beta = 1
epilogue is counted as overlapped traffic.

Liger-Kernel's FLCE is modelled from its chunking rule as published (chunk = next power of two of
N / ceil(V / H)) with bf16 logits and a bf16 grad_weight updated by addmm per chunk.
"""

from __future__ import annotations

import importlib
import math
from collections import Counter
from dataclasses import dataclass

import torch
from mage_fast.kernels import _launch

from benchmarks.model.roofline import Device, Row

plan_mod = importlib.import_module("mage_fast.ops.ce_mse_plan")
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
    gw_bytes: float = 0.0  # the part of `bytes` (and `serial`) that is grad_weight traffic
    tc_eff: float = 1.0  # wave quantisation of a GEMM
    serial: float = 0.0  # unhidden epilogue bytes
    note: str = ""


GROUP_M = 8  # row tiles that share each streamed column tile of the weight (kernels/_gemm._tile)
# The Triton grad_weight GEMMs: the first chunk stores its fp32 product (no zero fill), the last
# adds the running sum and writes the output dtype (no rounding pass), one chunk writes the output
# directly (kernels/ce_mse.py). False: every chunk accumulates into a zeroed fp32 buffer that a
# last pass rounds, as the torch and cuda backends do.
TRITON_STORES_FIRST = True
# fp32 accumulator bytes per V x H element moved by the grad_weight epilogue, by chunk position
EPILOGUE_BYTES = {"only": B, "first": 4, "middle": 8, "last": 4 + B}
CUBLAS_TILE = (128, 256)


def gemm_tile(impl: str, m: int, n: int, k: int, epilogue: str) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of a GEMM: the Triton kernels' fixed tile, or cuBLAS's assumed one."""
    if impl != "triton":
        return CUBLAS_TILE
    cfg = _launch.GEMM_TILES[_launch.gemm_tile_name(m, n, k, DTYPE, epilogue)]
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"]


def gemm_step(name: str, impl: str, dev: Device, mnk: tuple[int, int, int], io: float, epi: str = "none", **kw) -> Step:
    """A GEMM (m, n, k) with `io` overlapped bytes (operands and plain output); "acc": the Triton
    kernel's fp32 read-modify-write of c runs unhidden after each tile (cuBLAS: overlapped)."""
    m, n, k = mnk
    bm, bn = gemm_tile(impl, m, n, k, epi)
    tiles = math.ceil(m / bm) * math.ceil(n / bn)
    waves = math.ceil(tiles / dev.sms)
    eff = tiles / (waves * dev.sms)
    acc = 8.0 * m * n if epi == "acc" else 0.0
    serial, io = (acc, io) if impl == "triton" else (0.0, io + acc)
    note = f"{bm}x{bn} tiles {tiles}, waves {waves} for {tiles / dev.sms:.2f}"
    if serial:
        note += f", unhidden epilogue {serial / (dev.hbm_tbps * 1e12) * 1e3:.3f} ms"
    return Step(name, io + serial, tc=2.0 * m * n * k, tc_eff=eff, serial=serial, note=note, **kw)


def chunk_sizes(impl: str, dev: Device, v: int) -> list[int]:
    """Rows of each chunk: the op's planner, or Liger's rule for "liger"."""
    if impl == "liger":
        rows = triton_next_pow2(math.ceil(N / math.ceil(v / H)))
    else:
        rows = plan_mod.plan(N, H, v, DTYPE, dev.name).rows
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


def chunk_steps(impl: str, dev: Device, r: int, v: int, pos: str = "middle") -> list[Step]:
    """The kernels of one chunk of `r` tokens at position `pos` (only, first, middle, last)."""
    w, hc, pv = v * H * B, r * H * B, r * v * B
    w_reads = math.ceil(math.ceil(r / gemm_tile(impl, r, v, H, "none")[0]) / GROUP_M)  # W once per row-tile group
    logits_out = B if impl == "liger" else 4
    gh_out = r * H * (4 + 4 + B) if impl in ("torch", "cuda") else hc  # ATen: fp32 temporary, then copy
    mask_copy = 0 if impl == "liger" else 2 * hc  # ignored rows of h selected to 0
    if impl == "liger":  # bf16 grad_weight updated by addmm (cuBLAS, beta = 1): read + write in bf16
        gw_io = pv + hc + 2 * v * H * B
        gw = gemm_step("grad_weight", impl, dev, (v, H, r), gw_io, gw_bytes=2 * v * H * B)
    elif impl == "triton" and TRITON_STORES_FIRST:
        epi = "acc" if pos in ("middle", "last") else "none"
        gw = gemm_step("grad_weight", impl, dev, (v, H, r), pv + hc + mask_copy, epi, gw_bytes=0)
        serial = EPILOGUE_BYTES[pos] * v * H
        gw = Step(gw.name, pv + hc + mask_copy + serial, gw.tc, tc_eff=gw.tc_eff, serial=serial, gw_bytes=serial,
                  note=f"{gw.note.split(', unhidden')[0]}, {pos} chunk: unhidden epilogue "
                  f"{serial / (dev.hbm_tbps * 1e12) * 1e3:.3f} ms")  # fmt: skip
    else:
        gw = gemm_step("grad_weight", impl, dev, (v, H, r), pv + hc + mask_copy, "acc", gw_bytes=8 * v * H)
    reads = f", W read {w_reads}x"
    logits = gemm_step("logits", impl, dev, (r, v, H), w_reads * w + hc + r * v * logits_out)
    grad_h = gemm_step("grad_hidden", impl, dev, (r, H, v), pv + w_reads * w + gh_out)
    return [
        Step(logits.name, logits.bytes, tc=logits.tc, tc_eff=logits.tc_eff, note=logits.note + reads),
        Step("rows", r * v * _row_bytes(impl) + 16 * r, cuda=6 * r * v, sfu=2 * r * v),
        Step(grad_h.name, grad_h.bytes, tc=grad_h.tc, tc_eff=grad_h.tc_eff, note=grad_h.note + reads),
        gw,
    ]


def once_steps(impl: str, v: int) -> list[Step]:
    """Kernels run once per call: accumulator set-up and rounding, the backward's scaling."""
    if impl == "liger":
        return [Step("gw_zero", v * H * B, gw_bytes=v * H * B)]
    scale = Step("bwd_scale", 2 * N * H * B + 2 * v * H * B, cuda=N * H + v * H, gw_bytes=2 * v * H * B)
    if impl == "triton" and TRITON_STORES_FIRST:
        return [scale]
    return [
        Step("gw_zero", v * H * 4, gw_bytes=v * H * 4),
        Step("gw_round", v * H * (4 + B), gw_bytes=v * H * (4 + B)),
        scale,
    ]


def steps(impl: str, dev: Device, v: int) -> list[tuple[Step, int, int]]:
    """(step, how many times, rows) over the whole call."""
    sizes = chunk_sizes(impl, dev, v)
    pos = ["only"] if len(sizes) == 1 else ["first"] + ["middle"] * (len(sizes) - 2) + ["last"]
    out = []
    for (r, p), count in Counter(zip(sizes, pos)).items():
        out += [(s, count, r) for s in chunk_steps(impl, dev, r, v, p)]
    return out + [(s, 1, 0) for s in once_steps(impl, v)]


def _row(impl: str, v: int, step: Step, count: int, r: int) -> Row:
    phase = f"step:{step.name}" + (f"[{count}x{r}]" if r else "")
    note = f"grad_weight {count * step.gw_bytes / 1e9:.2f} GB" + (f"; {step.note}" if step.note else "")
    work = (count * step.tc, count * step.cuda, count * step.sfu)
    shape = f"N={N},H={H},V={v}"
    return Row("ce_mse", impl, phase, shape, count * step.bytes, *work, note, step.tc_eff, count * step.serial)


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


def extra_bytes(impl: str, dev: Device, v: int) -> float:
    """Device memory the call holds beyond its inputs and its returned gradients: one chunk's
    logits and P, and the fp32 grad_weight accumulator (Liger: bf16 logits of its chunk only)."""
    r = chunk_sizes(impl, dev, v)[0]
    if impl == "liger":
        return r * v * B
    return r * v * (4 + B) + v * H * 4


def summary_lines(name: str, dev: Device) -> list[str]:
    """One line per implementation and vocabulary: predicted fwd+bwd, the chunking, extra memory."""
    out = []
    for v in VOCABS:
        for impl in IMPLS:
            sizes = chunk_sizes(impl, dev, v)
            out.append(
                f"{name:6} ce_mse fwd+bwd {impl:7} V={v:<6}: {predicted_ms(impl, dev, v):6.1f} ms, "
                f"{len(sizes)} chunks of {sizes[0]} rows, {extra_bytes(impl, dev, v) / 1e9:.2f} GB extra "
                f"(FLOP roofline {roofline_ms(dev, v):.1f} ms)"
            )
    return out
