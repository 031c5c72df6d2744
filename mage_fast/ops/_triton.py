"""Glue to the Triton kernels (`mage_fast.kernels`): imported once, availability per device.

Triton is an optional dependency (`pip install mage-fast[triton]`); without it the `triton`
backend reports itself unavailable. Where it is installed:

* CUDA tensors: usable; backend="auto" runs Triton there where validated.json names it the
  device class's winner (`mage_fast.ops._backend`);
* CPU tensors: only under the Triton interpreter (TRITON_INTERPRET=1 set before mage_fast is
  imported: Triton reads it when the kernels are decorated), and never by "auto" (the interpreter
  is correct but orders of magnitude slower than the torch/C++ backends);
* other devices: unavailable.

The answers depend only on constants fixed at import and on the device type, so torch.compile
traces them as constants.
"""

from __future__ import annotations

from types import ModuleType

import torch

kernels: ModuleType | None
try:
    import mage_fast.kernels as kernels

    INTERPRET: bool = kernels.INTERPRET
    IMPORT_ERROR: str | None = None
except ImportError as e:  # triton missing (CPU-only installs may skip it)
    kernels = None
    INTERPRET = False
    IMPORT_ERROR = f"Triton is not importable ({e}); install it with `pip install triton`"


def unavailable_reason(device: torch.device) -> str | None:
    """None if the Triton kernels run on `device`, else why not."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if INTERPRET:
            return None
        return (
            "Triton kernels run on CPU tensors only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before mage_fast is first imported (Triton reads it when kernels are decorated)"
        )
    return f"no Triton kernels for device type {device.type!r}"


def auto_ok(device: torch.device) -> bool:
    """Triton's auto rule: false off CUDA (the interpreter is for tests). On CUDA `auto` follows
    validated.json instead of the auto rules."""
    return device.type == "cuda"
