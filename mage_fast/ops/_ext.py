"""Loading glue for the C++ extension `mage_fast._C`, and the native rows of the backend tables.

`mage_fast._C` holds the one `TORCH_LIBRARY(mage_fast)` (csrc/ops.cpp) and the CPU (and, in a
CUDA build, CUDA) kernels of the low-level ops `mage_fast::<op>_fwd` / `<op>_bwd`. It must be
loaded before the Python `torch.library.custom_op`s of the same namespace are defined, so every
op module imports this one first. The extension is optional: without it the `cpp` backend reports
itself unavailable and `backend="auto"` falls back to `torch`.

`native_rows` builds an op's two table rows of its one native path: `cpp` (the CPU kernel) and
`cuda` (the CUDA kernel of the same C++ op). Each op module registers its C++ ops' fakes and
autograd itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mage_fast.ops._backend import AutoRule, Backend

try:
    from mage_fast import _C  # noqa: F401  (the import runs the TORCH_LIBRARY initialisers)

    HAS_C: bool = True
    C_IMPORT_ERROR: str | None = None
except ImportError as e:  # not built: `pip install --no-build-isolation -e .`
    HAS_C = False
    C_IMPORT_ERROR = f"mage_fast._C could not be imported ({e}); build it with `pip install --no-build-isolation -e .`"


# Fixed per build: dynamo takes the answer as a constant instead of tracing into torch._C.
@torch.compiler.assume_constant_result
def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `mage_fast::<op>` has a kernel for `dispatch_key` ("CPU", "CUDA") in this build."""
    if not HAS_C:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"mage_fast::{op}", dispatch_key)


def cpp_unavailable_reason(op: str, device: torch.device) -> str | None:
    """None if the C++ kernel `mage_fast::<op>` runs on `device`, else a human-readable reason."""
    if not HAS_C:
        return C_IMPORT_ERROR
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    if key is None or not has_kernel(op, key):
        return f"mage_fast::{op} has no C++ kernel for device type {device.type!r} in this build"
    return None


def cpu_kernel_reason(op: str) -> Callable[[torch.device], str | None]:
    """Availability function of backend "cpp" (the C++ CPU twin of `mage_fast::<op>`)."""

    def reason(device: torch.device) -> str | None:
        if device.type != "cpu":
            return f"backend 'cpp' is the C++ CPU kernel; use backend='cuda' on {device.type}"
        return cpp_unavailable_reason(op, device)

    return reason


def cuda_kernel_reason(op: str) -> Callable[[torch.device], str | None]:
    """Availability function of backend "cuda" (the CUDA C++ kernel of `mage_fast::<op>`)."""

    def reason(device: torch.device) -> str | None:
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA devices only, got {device.type}"
        why = cpp_unavailable_reason(op, device)
        if why is not None:
            return why + " (build with a CUDA torch and nvcc: docs/install.md, 'GPU install and the build switches')"
        return None

    return reason


def native_rows(
    op: str, forward: Callable, backward: Callable | None = None, cpu_auto: AutoRule = True
) -> tuple[Backend, Backend]:
    """Table rows `cpp` and `cuda` of one native implementation: the C++ op `mage_fast::<op>`,
    whose dispatcher runs the CPU or the CUDA kernel of the tensors' device."""
    return (
        Backend("cpp", forward, backward, cpu_kernel_reason(op), auto=cpu_auto),
        Backend("cuda", forward, backward, cuda_kernel_reason(op)),
    )
