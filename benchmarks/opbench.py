"""What an op benchmark declares: its providers, shapes, inputs and FLOP/byte model (`OpBench`),
and the helpers that build the usual providers. `benchmarks.harness.main` runs a declaration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mage_fast.ops import BACKENDS, unavailable_reason

Inputs = dict[str, torch.Tensor]


@dataclass
class Provider:
    """One way to compute the op. `make(shape)` returns `call(inputs) -> output`; `available`
    returns None or the reason it cannot run on a device; `grad_in_forward` marks providers that
    compute the gradients inside the forward (their forward/backward split is not the op's)."""

    name: str
    make: Callable[[dict], Callable[[Inputs], torch.Tensor]]
    available: Callable[[torch.device], str | None] = lambda d: None
    grad_in_forward: bool = False
    needs_warmup: bool = False  # compiles on its first call: warm up even for a `light` shape
    light_on_cpu: bool = False  # every CPU case of this provider is `light` (one call)


@dataclass
class OpBench:
    """An op's benchmark. `shapes[sweep]` lists shape dicts; option keys: "modes" restricts the
    shape's modes, "light": True measures it with one call (memory probe = the only time sample;
    no warm-up unless the provider `needs_warmup`) for CPU points that take seconds per call.
    `flops(shape, mode)` and `nbytes(shape, mode, itemsize)` model the op."""

    op: str
    shapes: dict[str, list[dict]]
    make_inputs: Callable[[dict, torch.dtype, torch.device], Inputs]
    flops: Callable[[dict, str], float]
    nbytes: Callable[[dict, str, int], float]
    bound: str  # compute | memory
    providers: list[Provider] = field(default_factory=list)


OPTION_KEYS = ("modes", "light")


def shape_label(shape: dict) -> str:
    """The CSV's shape key, e.g. N=4096,H=1024,V=32000: the dims in order, no option keys."""
    return ",".join(f"{k}={v}" for k, v in shape.items() if k not in OPTION_KEYS)


def default_dtype(device: torch.device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


def sweep_shapes(bench: OpBench, sweep: str, device: torch.device) -> list[dict]:
    """`full` means the device's sweep: real-model shapes on GPUs, the CPU sweep on CPUs."""
    name = ("gpu" if device.type == "cuda" else "cpu") if sweep == "full" else sweep
    if name not in bench.shapes:
        raise SystemExit(f"{bench.op}: unknown sweep {sweep!r}; have full, {', '.join(bench.shapes)}")
    return bench.shapes[name]


# -- provider helpers --------------------------------------------------------------------------
COMPILE_BACKEND = "inductor"  # --compile-backend: aot_eager in the smoke run (no C++ codegen)
_COMPILED: dict[Callable, Callable] = {}


def compiled(fn: Callable) -> Callable:
    """One `torch.compile(fn)` per process (shapes after the first recompile as dynamic)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, backend=COMPILE_BACKEND)
    return _COMPILED[fn]


def backend_available(op: str, backend: str) -> Callable[[torch.device], str | None]:
    """Availability of `mage_fast.ops` backend `backend` of `op` as a performance provider."""

    def check(device: torch.device) -> str | None:
        if backend == "triton" and device.type != "cuda":
            return "the Triton interpreter on CPU checks correctness; it is no performance provider"
        return unavailable_reason(op, backend, device)

    return check


# Provider name -> `mage_fast.ops` backend: "op_torch" is the op's torch backend, apart from the
# eager reference provider "torch".
OP_PROVIDERS: dict[str, str] = {("op_torch" if b == "torch" else b): b for b in BACKENDS}


def standard_providers(
    op: str,
    reference: Callable[[dict], Callable[[Inputs], torch.Tensor]],
    compiled_ref: Callable[[dict], Callable[[Inputs], torch.Tensor]],
    backend: Callable[[str], Callable[[dict], Callable[[Inputs], torch.Tensor]]],
    grad_in_forward: bool = False,
) -> list[Provider]:
    """Every op's providers: the eager reference ("torch"), it under torch.compile ("compile"),
    and each `mage_fast.ops` backend ("op_torch" for the op's torch backend, "cpp", "triton",
    "cuda"); `grad_in_forward` for ops that compute their gradients in the forward."""
    ops = [Provider(name, backend(n), backend_available(op, n), grad_in_forward) for name, n in OP_PROVIDERS.items()]
    return [Provider("torch", reference), Provider("compile", compiled_ref, compile_available, needs_warmup=True), *ops]


def compile_available(device: torch.device) -> str | None:
    if device.type == "cpu" and not any(
        os.path.exists(os.path.join(p, c)) for p in os.environ.get("PATH", "").split(":") for c in ("g++", "c++")
    ):
        return "torch.compile on CPU needs a C++ compiler (g++) on PATH"
    return None


def module_available(module: str, device: torch.device, needs_cuda: bool = True) -> str | None:
    """None if `module` imports (and a CUDA device is used when `needs_cuda`), else why not."""
    if needs_cuda and device.type != "cuda":
        return f"{module} runs Triton kernels on CUDA only"
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001  (any import failure means: not installed here)
        return f"{module} is not importable ({type(e).__name__}: {str(e)[:80]})"
    return None
