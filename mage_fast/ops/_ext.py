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
            return why + " (build with a CUDA torch and nvcc: see README, 'GPU install')"
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


if HAS_C:
    # ce_mse_fwd: fake, and autograd that scales the gradients the forward already computed.

    @torch.library.register_fake("mage_fast::ce_mse_fwd")
    def _ce_mse_fwd_fake(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
                         need_hidden_grad, need_weight_grad, need_img_grad, chunk_rows):  # fmt: skip
        s = hidden.new_empty((), dtype=torch.float32)
        gh = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)
        gw = torch.empty_like(weight) if need_weight_grad else weight.new_empty(0)
        gi = torch.empty_like(img) if need_img_grad else img.new_empty(0)
        return s, s.clone(), s.clone(), gh, gw, gi

    def _ce_mse_fwd_setup(ctx, inputs, output) -> None:
        ctx.lam = inputs[6]
        ctx.flags = inputs[9:12]
        ctx.save_for_backward(*output[3:])

    def _ce_mse_fwd_backward(ctx, d_loss, d_ce, d_mse, *_):
        gh, gw, gi = ctx.saved_tensors
        need_h, need_w, need_i = ctx.flags
        zero = torch.zeros((), dtype=torch.float32, device=gh.device)
        d_loss = zero if d_loss is None else d_loss
        s_ce = d_loss + (zero if d_ce is None else d_ce)
        s_mse = d_loss * ctx.lam + (zero if d_mse is None else d_mse)
        dh = gh * s_ce if need_h else None
        dw = gw * s_ce if need_w else None
        di = gi * s_mse if need_i else None
        return dh, dw, None, di, None, None, None, None, None, None, None, None, None

    torch.library.register_autograd("mage_fast::ce_mse_fwd", _ce_mse_fwd_backward, setup_context=_ce_mse_fwd_setup)
