"""Benchmark `ian_projection` (LN(GELU(x w1^T + b1) w2^T + b2), IAN's vector alignment block).

    python -m benchmarks.bench_ian_projection           # the device's sweep, every provider
    python -m benchmarks.bench_ian_projection --sweep smoke --isolate none

Shapes: M = B x 576 patch tokens (CLIP ViT-L/14 at 336 px), C = 1024 (the tower's width), D the
LLM's width. GPU: B in {4, 16, 64}, D in {2048, 4096}. CPU: (B, D) in (1, 1024), (4, 1024),
(1, 2048).
Everything trains (x and all parameters need grads). Compute-bound: the roofline is TFLOP/s
against the run's measured matmul.

Providers: `torch` (reference.ian_projection_ref: F.linear, F.gelu, F.linear, F.layer_norm),
`compile` (torch.compile of it) and the op's backends `op_torch` (fp32 epilogues, recomputed
GELU), `cpp`, `triton`, `cuda`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from benchmarks.harness import main
from benchmarks.opbench import Inputs, OpBench, compiled, standard_providers
from mage_fast.ops import ian_projection
from mage_fast.ops.reference import ian_projection_ref

OP = "ian_projection"
_GPU = [{"B": b, "M": b * 576, "C": 1024, "D": d} for d in (2048, 4096) for b in (4, 16, 64)]
_CPU = [{"B": b, "M": b * 576, "C": 1024, "D": d} for b, d in ((1, 1024), (4, 1024), (1, 2048))]
_SMOKE = [{"B": 1, "M": 64, "C": 32, "D": 48}, {"B": 1, "M": 100, "C": 40, "D": 64}]
_CHECK = [{"B": 64, "M": 64 * 576, "C": 1024, "D": 4096}]  # `make gpu-check`: the model's aligner
SHAPES = {"gpu": _GPU, "cpu": _CPU, "smoke": _SMOKE, "check": _CHECK}
_NAMES = ("x", "w1", "b1", "w2", "b2", "ln_w", "ln_b")


def make_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> Inputs:
    """x (M, C) and the block's parameters (nn.Linear-like scales), all requiring grad."""
    M, C, D = shape["M"], shape["C"], shape["D"]

    def t(*size: int, scale: float = 1.0, fill: float | None = None) -> torch.Tensor:
        v = torch.full(size, fill, device=device) if fill is not None else torch.randn(*size, device=device) * scale
        return v.to(dtype).requires_grad_()

    return {
        "x": t(M, C),
        "w1": t(D, C, scale=C**-0.5),
        "b1": t(D, scale=0.02),
        "w2": t(D, D, scale=D**-0.5),
        "b2": t(D, scale=0.02),
        "ln_w": t(D, fill=1.0),
        "ln_b": t(D, fill=0.0),
    }


def flops(shape: dict, mode: str) -> float:
    """The two GEMMs: 2M(CD + D^2) forward; the backward's four GEMMs twice that."""
    M, C, D = shape["M"], shape["C"], shape["D"]
    fwd = 2.0 * M * (C * D + D * D)
    return {"forward": fwd, "backward": 2 * fwd, "full": 3 * fwd}[mode]


def nbytes(shape: dict, mode: str, itemsize: int) -> float:
    """Forward: read x, w1, w2, write y. Backward: read dy, x, w1, w2 and two saved (M, D), write
    dx, dw1, dw2. (Vectors of D elements left out.)"""
    M, C, D = shape["M"], shape["C"], shape["D"]
    fwd = itemsize * (M * C + D * C + D * D + M * D)
    bwd = itemsize * (3 * M * D + 2 * M * C + 2 * D * C + 2 * D * D)
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


def _reference(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    return lambda i: ian_projection_ref(*(i[n] for n in _NAMES))


def _compiled(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    fn = compiled(ian_projection_ref)
    return lambda i: fn(*(i[n] for n in _NAMES))


def _backend(name: str) -> Callable[[dict], Callable[[Inputs], torch.Tensor]]:
    def make(shape: dict) -> Callable[[Inputs], torch.Tensor]:
        return lambda i: ian_projection(*(i[n] for n in _NAMES), backend=name)

    return make


BENCH = OpBench(
    OP, SHAPES, make_inputs, flops, nbytes, "compute", standard_providers(OP, _reference, _compiled, _backend)
)

if __name__ == "__main__":
    sys.exit(main(BENCH, "benchmarks.bench_ian_projection"))
