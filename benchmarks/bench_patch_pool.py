"""Benchmark `patch_pool` (k x k average pooling of a token grid, in token layout).

    python -m benchmarks.bench_patch_pool               # the device's sweep, every provider
    python -m benchmarks.bench_patch_pool --sweep smoke --isolate none

Shapes: GPU, the real ones: B in {16, 64} images, grids 24 x 24 (CLIP ViT-L/14 at 336 px) and
27 x 27 (SigLIP so400m/14 at 384 px), C in {1024, 1152}, k in {2, 3}. CPU: B = 16, C = 1024, both
grids, k in {2, 3} (the same per-image sizes; fewer of them). Memory-bound: the roofline is GB/s
against the run's measured copy bandwidth.

Providers: `torch` (reference.patch_pool_ref: permute + avg_pool2d + permute back), `compile`
(torch.compile of it) and the op's backends `op_torch` (channels-last avg_pool2d), `cpp`,
`triton`, `cuda`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from benchmarks.harness import main
from benchmarks.opbench import Inputs, OpBench, compiled, standard_providers
from mage_fast.ops import patch_pool
from mage_fast.ops.reference import patch_pool_ref

OP = "patch_pool"
_GPU = [{"B": b, "G": g, "C": c, "k": k} for b in (16, 64) for g in (24, 27) for c in (1024, 1152) for k in (2, 3)]
_CPU = [{"B": 16, "G": g, "C": 1024, "k": k} for g in (24, 27) for k in (2, 3)]
_SMOKE = [{"B": 2, "G": 6, "C": 32, "k": 2}, {"B": 3, "G": 7, "C": 48, "k": 3}]
_CHECK = [{"B": 64, "G": 24, "C": 1024, "k": 2}]  # `make gpu-check`: a CLIP-L tower's grid
SHAPES = {"gpu": _GPU, "cpu": _CPU, "smoke": _SMOKE, "check": _CHECK}


def _out_tokens(shape: dict) -> int:
    return (-(-shape["G"] // shape["k"])) ** 2


def make_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> Inputs:
    """x (B, G*G, C), requiring grad."""
    x = torch.randn(shape["B"], shape["G"] ** 2, shape["C"], device=device, dtype=dtype)
    return {"x": x.requires_grad_()}


def flops(shape: dict, mode: str) -> float:
    """One add per input element and one scale per output element; the backward one per input."""
    B, C = shape["B"], shape["C"]
    fwd = B * C * (shape["G"] ** 2 + _out_tokens(shape))
    bwd = B * C * shape["G"] ** 2
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}[mode]


def nbytes(shape: dict, mode: str, itemsize: int) -> float:
    """Read x, write y; the backward reads dy and writes dx: the same traffic."""
    io = itemsize * shape["B"] * shape["C"] * (shape["G"] ** 2 + _out_tokens(shape))
    return {"forward": io, "backward": io, "full": 2 * io}[mode]


def _reference(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    grid, k = (shape["G"], shape["G"]), shape["k"]
    return lambda i: patch_pool_ref(i["x"], grid, k)


def _compiled(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    fn, grid, k = compiled(patch_pool_ref), (shape["G"], shape["G"]), shape["k"]
    return lambda i: fn(i["x"], grid, k)


def _backend(name: str) -> Callable[[dict], Callable[[Inputs], torch.Tensor]]:
    def make(shape: dict) -> Callable[[Inputs], torch.Tensor]:
        grid, k = (shape["G"], shape["G"]), shape["k"]
        return lambda i: patch_pool(i["x"], grid, k, backend=name)

    return make


BENCH = OpBench(
    OP, SHAPES, make_inputs, flops, nbytes, "memory", standard_providers(OP, _reference, _compiled, _backend)
)

if __name__ == "__main__":
    sys.exit(main(BENCH, "benchmarks.bench_patch_pool"))
