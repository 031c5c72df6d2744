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

from collections.abc import Callable

import torch

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

    torch.library.register_autograd("mage_fast::patch_pool_fwd", _patch_pool_fwd_backward, setup_context=_setup_grid)
    torch.library.register_autograd("mage_fast::patch_pool_bwd", _patch_pool_bwd_backward, setup_context=_setup_grid)


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
            return why + " (build with a CUDA torch and nvcc: see README, 'GPU install')"
        return None

    return reason


if HAS_C:
    # ian_projection_fwd / _bwd: fakes, and autograd of the forward through the C++ backward
    # (so the low-level op is differentiable and opcheck-able on its own).

    @torch.library.register_fake("mage_fast::ian_projection_fwd")
    def _ian_projection_fwd_fake(x, w1, b1, w2, b2, ln_w, ln_b, eps, save):
        torch._check(x.dim() == 2 and w1.dim() == 2, lambda: "ian_projection_fwd: x (N, C), w1 (D, C)")
        N, D = x.shape[0], w1.shape[0]
        if not save:
            return x.new_empty((N, D)), x.new_empty(0), x.new_empty(0), x.new_empty(0, dtype=torch.float32)
        return x.new_empty((N, D)), x.new_empty((N, D)), x.new_empty((N, D)), x.new_empty((N,), dtype=torch.float32)

    @torch.library.register_fake("mage_fast::ian_projection_bwd")
    def _ian_projection_bwd_fake(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs):
        D = w1.shape[0]
        like = [(x, x.shape), (w1, w1.shape), (w1, (D,)), (w2, w2.shape), (w2, (D,)), (ln_w, (D,)), (ln_w, (D,))]
        return tuple(src.new_empty(tuple(shape) if n else (0,)) for n, (src, shape) in zip(needs, like))

    def _ian_fwd_setup(ctx, inputs, output) -> None:
        x, w1, _, w2, _, ln_w, _, _, save = inputs
        _, z1, xhat, rstd = output
        ctx.save = save
        ctx.save_for_backward(x, w1, w2, ln_w, z1, xhat, rstd)

    def _ian_fwd_backward(ctx, dy, _dz1, _dxhat, _drstd):
        if not ctx.save:
            raise RuntimeError("ian_projection_fwd: backward needs the forward run with save=True")
        x, w1, w2, ln_w, z1, xhat, rstd = ctx.saved_tensors
        needs = [bool(n) for n in ctx.needs_input_grad[:7]]
        out = torch.ops.mage_fast.ian_projection_bwd(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs)
        return (*[g if n else None for g, n in zip(out, needs)], None, None)

    torch.library.register_autograd("mage_fast::ian_projection_fwd", _ian_fwd_backward, setup_context=_ian_fwd_setup)
