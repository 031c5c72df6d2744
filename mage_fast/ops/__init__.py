"""mage-fast ops: differentiable `torch.library` custom ops with selectable backends.

    patch_pool(x, grid, k=2, backend="auto")                                   (B, H*W, C) -> pooled
    ian_projection(x, w1, b1, w2, b2, ln_w, ln_b, eps=1e-5, backend="auto")   (..., C) -> (..., D)
    ce_mse(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index=-100,
           num_items=None, backend="auto") -> (loss, ce, mse)

Backends: torch | cpp | triton | cuda, or "auto" (`mage_fast.ops._backend`): on CPU the first
usable backend whose auto rule allows the device, in the order cpp, torch (cpp where the op's
table opts it in; triton and cuda never); on CUDA the winner that validated.json names for the
device's class, else torch. Query the tables with `table(op)` and `backend_for(op, device,
choice)`; `device_class(device)` names the class a measurement holds for (validated.json,
benchmarks/baselines.json, the ce_mse planner). Pure-torch twins for tests live in
`mage_fast.ops.reference`.
"""

from mage_fast.ops import _ext  # noqa: F401  (loads mage_fast._C before the Python custom ops)
from mage_fast.ops._backend import (
    BACKENDS,
    VALIDATED_PATH,
    Backend,
    available,
    backend_for,
    device_class,
    resolve,
    table,
    unavailable_reason,
)
from mage_fast.ops.ce_mse import ce_mse
from mage_fast.ops.ian_projection import ian_projection
from mage_fast.ops.patch_pool import patch_pool

__all__ = [
    "BACKENDS",
    "VALIDATED_PATH",
    "Backend",
    "available",
    "backend_for",
    "ce_mse",
    "device_class",
    "ian_projection",
    "patch_pool",
    "resolve",
    "table",
    "unavailable_reason",
]
