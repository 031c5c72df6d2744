"""Backend choice for the ops: `torch | cpp | triton | cuda`, or `auto`.

Each op module registers, per backend it implements, a function `device -> reason | None`
(None: usable on that device). `resolve` turns the user's `backend=` into a concrete name:

* `"auto"` walks `AUTO_ORDER` (fastest first) and takes the first backend that the op implements,
  that is usable on the device and that was registered with `auto=True`;
* a named backend must be implemented and usable, else a `ValueError` says which op, backend and
  device, and why.

Today: every op has `torch`, `cpp` (CPU, C++ twins in mage_fast._C), `triton` (CUDA; CPU only
under TRITON_INTERPRET=1, never chosen by auto there) and `cuda` (when mage_fast._C was built
with nvcc). A backend joins with `register(op, name,
availability, auto)` from its op module; `auto` may be a predicate on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BACKENDS: tuple[str, ...] = ("torch", "cpp", "triton", "cuda")
# Preferred first. On CUDA tensors Triton leads: the Triton kernels are the fused ones (GEMM
# epilogues, online LSE over vocabulary tiles) and the issue that added them made them auto's
# pick; the CUDA C++ kernels (cuBLAS GEMMs + our row kernels) are a named choice until a GPU
# benchmark shows them faster (benchmarks/). The Triton interpreter (CPU) is correct but slow:
# Triton registers an auto predicate that is true on CUDA only.
AUTO_ORDER: tuple[str, ...] = ("triton", "cuda", "cpp", "torch")

Availability = Callable[[torch.device], "str | None"]
AutoRule = bool | Callable[[torch.device], bool]

# op -> backend -> (availability, eligible for auto: a bool or a predicate on the device)
_REGISTRY: dict[str, dict[str, tuple[Availability, AutoRule]]] = {}


def always(device: torch.device) -> str | None:
    """Availability of pure-torch code: every device."""
    return None


def register(op: str, backend: str, availability: Availability = always, auto: AutoRule = True) -> None:
    """Declare that `op` implements `backend`; `availability(device)` returns None or a reason.
    `auto`: whether backend="auto" may pick it (a predicate: on which devices)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for {op}; known: {', '.join(BACKENDS)}")
    _REGISTRY.setdefault(op, {})[backend] = (availability, auto)


def _auto_ok(rule: AutoRule, device: torch.device) -> bool:
    return rule(device) if callable(rule) else bool(rule)


def available(op: str, device: torch.device | str) -> list[str]:
    """Backends of `op` usable on `device`, in auto order."""
    device = torch.device(device)
    table = _REGISTRY.get(op, {})
    return [b for b in AUTO_ORDER if b in table and table[b][0](device) is None]


def resolve(op: str, backend: str, device: torch.device | str) -> str:
    """The concrete backend `op` runs with on `device` for the user's choice `backend`."""
    device = torch.device(device)
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}")
    table = _REGISTRY[op]
    if backend == "auto":
        for b in AUTO_ORDER:
            if b in table and _auto_ok(table[b][1], device) and table[b][0](device) is None:
                return b
        raise ValueError(f"{op}: no backend is available on device {device}")
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose auto or one of {', '.join(BACKENDS)}")
    if backend not in table:
        done = ", ".join(b for b in BACKENDS if b in table)
        raise ValueError(f"{op}: backend {backend!r} is not implemented yet (device {device}); implemented: {done}")
    why = table[backend][0](device)
    if why is not None:
        raise ValueError(f"{op}: backend {backend!r} is unavailable on device {device}: {why}")
    return backend
