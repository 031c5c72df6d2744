"""Loading glue for the C++ extension `mage_fast._C` and Python registrations of its ops.

`mage_fast._C` holds the one `TORCH_LIBRARY(mage_fast)` (csrc/ops.cpp) and the CPU (and, in a
CUDA build, CUDA) kernels of the low-level ops `mage_fast::<op>_fwd` / `<op>_bwd`. It must be
loaded before the Python `torch.library.custom_op`s of the same namespace are defined, so every
op module imports this one first. The extension is optional: without it the `cpp` backend reports
itself unavailable and `backend="auto"` falls back to `torch`.

Here the C++ ops get what C++ does not give them: fake (meta) kernels for torch.compile and
autograd (`patch_pool_bwd` is the adjoint of `patch_pool_fwd` and vice versa, so both are
differentiable to any order).
"""

from __future__ import annotations

import torch

try:
    from mage_fast import _C  # noqa: F401  (the import runs the TORCH_LIBRARY initialisers)

    HAS_C: bool = True
    C_IMPORT_ERROR: str | None = None
except ImportError as e:  # not built: `pip install --no-build-isolation -e .`
    HAS_C = False
    C_IMPORT_ERROR = (
        f"mage_fast._C could not be imported ({e}); build it with `pip install --no-build-isolation -e .`"
    )


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


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


if HAS_C:

    @torch.library.register_fake("mage_fast::patch_pool_fwd")
    def _patch_pool_fwd_fake(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
        torch._check(x.dim() == 3 and k >= 1, lambda: "patch_pool_fwd: x must be (B, H*W, C), k >= 1")
        return x.new_empty((x.shape[0], _ceil_div(H, k) * _ceil_div(W, k), x.shape[2]))

    @torch.library.register_fake("mage_fast::patch_pool_bwd")
    def _patch_pool_bwd_fake(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
        torch._check(grad_y.dim() == 3 and k >= 1, lambda: "patch_pool_bwd: grad_y must be 3-D, k >= 1")
        return grad_y.new_empty((grad_y.shape[0], H * W, grad_y.shape[2]))

    def _setup_grid(ctx, inputs, output) -> None:
        _, ctx.H, ctx.W, ctx.k = inputs

    def _patch_pool_fwd_backward(ctx, grad_y: torch.Tensor):
        return torch.ops.mage_fast.patch_pool_bwd(grad_y, ctx.H, ctx.W, ctx.k), None, None, None

    def _patch_pool_bwd_backward(ctx, grad_gx: torch.Tensor):
        return torch.ops.mage_fast.patch_pool_fwd(grad_gx, ctx.H, ctx.W, ctx.k), None, None, None

    torch.library.register_autograd(
        "mage_fast::patch_pool_fwd", _patch_pool_fwd_backward, setup_context=_setup_grid
    )
    torch.library.register_autograd(
        "mage_fast::patch_pool_bwd", _patch_pool_bwd_backward, setup_context=_setup_grid
    )
