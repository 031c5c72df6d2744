"""Benchmark `ce_mse` (fused lm_head + cross-entropy + image MSE) against eager, compile and anchors.

    python -m benchmarks.bench_ce_mse                   # the device's sweep, every provider
    python -m benchmarks.bench_ce_mse --sweep smoke --isolate op

Shapes: GPU, the real ones: N tokens in {4k, 8k, 16k}, H = 4096, V in {32000 (Llama-2), 128256
(Llama-3), 151936 (Qwen2)}. CPU: H = 1024, V = 32000; N = 256 in every mode, N in {1024, 4096} in
`full` mode, measured with a single call each (`light`: seconds per call on 2 cores); N = 4096 is
the memory point (eager's fp32 logits alone are 4096 x 32000 x 4 B = 500 MiB).

Providers: `torch` (reference.ce_mse_ref: full logits + F.cross_entropy), `compile`
(torch.compile of it), the op's backends `op_torch` (chunked, online log-sum-exp), `cpp`,
`triton`, `cuda`, and the anchors `liger` (Liger-Kernel's fused linear CE, its Triton
implementation), `liger_cute` (its CuTe-DSL SM90 path, where `cutlass.cute` imports), `cce` (Apple's
cut-cross-entropy) and `torch_lce` (torch's chunked F.linear_cross_entropy, where torch has it).
Anchors compute the CE only; the MSE term is O(M x H), negligible beside the N x H x V GEMMs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from benchmarks.harness import main
from benchmarks.opbench import Inputs, OpBench, Provider, compiled, module_available, standard_providers
from mage_fast.ops import ce_mse
from mage_fast.ops.reference import ce_mse_ref

OP = "ce_mse"
_GPU = [{"N": n, "H": 4096, "V": v} for v in (32000, 128256, 151936) for n in (4096, 8192, 16384)]
_CPU = [
    {"N": 256, "H": 1024, "V": 32000},
    {"N": 1024, "H": 1024, "V": 32000, "modes": ("full",), "light": True},
    {"N": 4096, "H": 1024, "V": 32000, "modes": ("full",), "light": True},  # the memory point
]
_SMOKE = [{"N": 64, "H": 64, "V": 512}, {"N": 128, "H": 64, "V": 1000}]
# `make gpu-check`: the peers' published point (N=16384, H=4096) at both vocabularies.
_CHECK = [{"N": 16384, "H": 4096, "V": v} for v in (32000, 128256)]
SHAPES = {"gpu": _GPU, "cpu": _CPU, "smoke": _SMOKE, "check": _CHECK}


def make_inputs(shape: dict, dtype: torch.dtype, device: torch.device) -> Inputs:
    """hidden (N, H), weight (V, H) and img (M, H) need grads; every 8th label is ignored."""
    N, H, V = shape["N"], shape["H"], shape["V"]
    M = max(2, N // 576)  # images of 576 visual tokens
    labels = torch.randint(0, V, (N,), device=device)
    labels[::8] = -100
    mask = torch.ones(M, dtype=torch.bool, device=device)
    mask[-1] = False
    return {
        "hidden": torch.randn(N, H, device=device, dtype=dtype).requires_grad_(),
        "weight": (torch.randn(V, H, device=device) * H**-0.5).to(dtype).requires_grad_(),
        "labels": labels,
        "img": torch.randn(M, H, device=device, dtype=dtype).requires_grad_(),
        "img_target": torch.randn(M, H, device=device, dtype=dtype),
        "img_mask": mask,
    }


def flops(shape: dict, mode: str) -> float:
    """The lm_head GEMM: 2NHV forward, 4NHV backward (grad of hidden and of weight)."""
    f = 2.0 * shape["N"] * shape["H"] * shape["V"]
    return {"forward": f, "backward": 2 * f, "full": 3 * f}[mode]


def nbytes(shape: dict, mode: str, itemsize: int) -> float:
    """Least traffic: read hidden and weight (+ labels); the backward also writes their grads."""
    N, H, V = shape["N"], shape["H"], shape["V"]
    io = itemsize * (N * H + V * H)
    return {"forward": io + 8 * N, "backward": 2 * io, "full": 3 * io + 8 * N}[mode]


def _args(i: Inputs) -> tuple:
    return i["hidden"], i["weight"], i["labels"], i["img"], i["img_target"], i["img_mask"], 1.0


def _reference(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    return lambda i: ce_mse_ref(*_args(i))[0]


def _compiled(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    fn = compiled(ce_mse_ref)
    return lambda i: fn(*_args(i))[0]


def _backend(name: str) -> Callable[[dict], Callable[[Inputs], torch.Tensor]]:
    def make(shape: dict) -> Callable[[Inputs], torch.Tensor]:
        return lambda i: ce_mse(*_args(i), backend=name)[0]

    return make


def _liger(impl: str) -> Callable[[dict], Callable[[Inputs], torch.Tensor]]:
    """Liger-Kernel's FLCE with implementation `impl` pinned around each call (Liger picks its
    CuTe-DSL path on Hopper by itself where it imports; pinned, each provider is one path)."""

    def make(shape: dict) -> Callable[[Inputs], torch.Tensor]:
        from liger_kernel.backends import get_impl, set_impl
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as fn

        def call(i: Inputs) -> torch.Tensor:
            before = get_impl()
            set_impl(impl)
            try:
                out = fn(i["hidden"], i["weight"], i["labels"])
            finally:
                set_impl(before)
            return out[0] if isinstance(out, tuple) else out

        return call

    return make


def _liger_cute_available(device: torch.device) -> str | None:
    why = module_available("liger_kernel", device) or module_available("cutlass.cute", device)
    if why is None and torch.cuda.get_device_capability(device) < (9, 0):
        return "Liger's CuTe-DSL path needs sm_90 or newer"
    return why


def _cce(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    from cut_cross_entropy import linear_cross_entropy

    return lambda i: linear_cross_entropy(i["hidden"], i["weight"], i["labels"])


def _torch_lce_available(device: torch.device) -> str | None:
    import torch.nn.functional as F

    if not (hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions")):
        return f"torch {torch.__version__} has no chunked F.linear_cross_entropy"
    return None


def _torch_lce(shape: dict) -> Callable[[Inputs], torch.Tensor]:
    import torch.nn.functional as F

    opts = torch.nn.LinearCrossEntropyOptions()
    return lambda i: F.linear_cross_entropy(i["hidden"], i["weight"], i["labels"], options=opts)


# The op computes every gradient in its forward; its backward only rescales them.
PROVIDERS = [
    *standard_providers(OP, _reference, _compiled, _backend, grad_in_forward=True),
    Provider("liger", _liger("triton"), lambda d: module_available("liger_kernel", d), grad_in_forward=True),
    Provider("liger_cute", _liger("cutedsl"), _liger_cute_available, grad_in_forward=True),
    Provider("cce", _cce, lambda d: module_available("cut_cross_entropy", d)),
    # torch 2.13's chunked CE on CPU: ~14 s a call at N=256 (the eager reference: 0.8 s).
    Provider("torch_lce", _torch_lce, _torch_lce_available, grad_in_forward=True, light_on_cpu=True),
]
BENCH = OpBench(OP, SHAPES, make_inputs, flops, nbytes, "compute", PROVIDERS)

if __name__ == "__main__":
    sys.exit(main(BENCH, "benchmarks.bench_ce_mse"))
