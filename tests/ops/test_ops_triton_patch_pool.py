"""patch_pool, backend="triton" (the interpreter on CPU): vs the avg_pool2d reference, opcheck, backend choice."""

from __future__ import annotations

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves
from tritonutil import on_device, requires_triton  # noqa: F401  (on_device: autouse fixture)

from mage_fast.ops import _triton, patch_pool, resolve
from mage_fast.ops.reference import patch_pool_ref

pytestmark = requires_triton


# (H, W, k, C): odd grids, k not dividing H/W, k = 1, k larger than the grid, the MAGE 24x24;
# C = 130 (fp32) spans two channel blocks, the others one partial block.
@pytest.mark.parametrize(
    "H,W,k,C", [(5, 7, 2, 10), (5, 7, 3, 130), (4, 6, 2, 10), (3, 3, 1, 3), (2, 3, 4, 10), (24, 24, 2, 6)]
)
def test_fp32_forward_backward(H: int, W: int, k: int, C: int) -> None:
    x = torch.randn(3, H * W, C)
    (xa,), (xr,) = leaves(x), leaves(x)
    y, r = patch_pool(xa, (H, W), k, backend="triton"), patch_pool_ref(xr, (H, W), k)
    assert_close32("y", y, r)
    g = torch.randn_like(r)
    assert_close32("dx", grads(y, [xa], g)[0], grads(r, [xr], g)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    H, W, k = 5, 7, 3
    x = torch.randn(2, H * W, 33).to(dtype)  # inputs exactly representable in dtype
    (xa,), (xl,), (x32,) = leaves(x), leaves(x), leaves(x, dtype=torch.float32)
    y = patch_pool(xa, (H, W), k, backend="triton")
    rl, r32 = patch_pool_ref(xl, (H, W), k), patch_pool_ref(x32, (H, W), k)
    assert y.dtype == dtype
    assert_lowp("y", y, rl, r32, atol=1e-3)
    g = torch.randn_like(r32).to(dtype)
    gy, gl, g32 = grads(y, [xa], g)[0], grads(rl, [xl], g)[0], grads(r32, [x32], g.float())[0]
    assert gy.dtype == dtype
    assert_lowp("dx", gy, gl, g32, atol=1e-3)


def test_strided_input_grad_and_empty_batch() -> None:
    # Strides go to the kernel: a transposed input and a permuted incoming grad need no copy.
    x = torch.randn(35, 2, 6).transpose(0, 1).requires_grad_()
    assert not x.is_contiguous()
    y = patch_pool(x, (5, 7), 2, backend="triton")
    assert_close32("y", y, patch_pool_ref(x, (5, 7), 2))
    g = torch.randn(6, 12, 2).permute(2, 1, 0)
    got = grads(y, [x], g)[0]
    assert_close32("dx (permuted grad)", got, grads(patch_pool_ref(x, (5, 7), 2), [x], g)[0])
    assert patch_pool(torch.randn(0, 35, 6), (5, 7), 2, backend="triton").shape == (0, 12, 6)


def test_opcheck() -> None:
    x = torch.randn(2, 15, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.mage_fast.patch_pool.default, (x, 3, 5, 2, "triton"))


def test_backend_choice(monkeypatch) -> None:
    # auto never picks the interpreter; on CUDA it would pick triton (availability allowing).
    assert resolve("patch_pool", "auto", "cpu") == "cpp"
    assert _triton.auto_ok(torch.device("cuda", 0)) and not _triton.auto_ok(torch.device("cpu"))
    with pytest.raises(ValueError, match="backend 'triton' is unavailable on device meta: no Triton kernels"):
        resolve("patch_pool", "triton", "meta")
    # Kernels decorated without the interpreter cannot take CPU tensors: a clear error, no crash.
    monkeypatch.setattr(_triton, "INTERPRET", False)
    with pytest.raises(ValueError, match="unavailable on device cpu: .*TRITON_INTERPRET=1"):
        patch_pool(torch.randn(1, 4, 2, device="cpu"), (2, 2), 2, backend="triton")
