"""mage-fast ops: differentiable `torch.library` custom ops with selectable backends.

    patch_pool(x, grid, k=2, backend="auto")                                   (B, H*W, C) -> pooled
    ian_projection(x, w1, b1, w2, b2, ln_w, ln_b, eps=1e-5, backend="auto")   (..., C) -> (..., D)
    ce_mse(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index=-100,
           num_items=None, backend="auto") -> (loss, ce, mse)

Backends: torch | cpp | triton | cuda; "auto" picks the fastest usable one for the device
(`mage_fast.ops._backend`). Pure-torch twins for tests live in `mage_fast.ops.reference`.
"""

from mage_fast.ops import _ext  # noqa: F401  (loads mage_fast._C before the Python custom ops)
from mage_fast.ops._backend import BACKENDS, available, resolve
from mage_fast.ops.ce_mse import ce_mse
from mage_fast.ops.ian_projection import ian_projection
from mage_fast.ops.patch_pool import patch_pool

__all__ = ["BACKENDS", "available", "ce_mse", "ian_projection", "patch_pool", "resolve"]
