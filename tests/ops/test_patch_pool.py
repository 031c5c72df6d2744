"""patch_pool on every backend (the `backend` fixture) vs the avg_pool2d reference; opcheck,
gradcheck of the native ops, backend choice, input checks."""

from __future__ import annotations

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves

from mage_fast.ops import _triton, patch_pool, resolve
from mage_fast.ops.reference import patch_pool_ref

# (H, W, k, C): odd grids, k not dividing H/W, k = 1, k larger than the grid, the MAGE 24x24 (its
# Wo = 12 tiles by 4 without masks); C = 130 spans several channel blocks with a partial one.
CASES = [(5, 7, 2, 10), (5, 7, 3, 130), (4, 6, 2, 10), (3, 3, 1, 3), (2, 3, 4, 10), (24, 24, 2, 6)]


@pytest.mark.parametrize("H,W,k,C", CASES)
def test_fp32_forward_backward(backend: str, H: int, W: int, k: int, C: int) -> None:
    x = torch.randn(3, H * W, C)
    (xa,), (xr,) = leaves(x), leaves(x)
    y, r = patch_pool(xa, (H, W), k, backend=backend), patch_pool_ref(xr, (H, W), k)
    assert_close32("y", y, r)
    g = torch.randn_like(r)
    assert_close32("dx", grads(y, [xa], g)[0], grads(r, [xr], g)[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H,W,k", [(5, 7, 2), (5, 7, 3)])
def test_low_precision(backend: str, dtype: torch.dtype, H: int, W: int, k: int) -> None:
    x = torch.randn(2, H * W, 33).to(dtype)  # inputs exactly representable in dtype
    (xa,), (xl,), (x32,) = leaves(x), leaves(x), leaves(x, dtype=torch.float32)
    y = patch_pool(xa, (H, W), k, backend=backend)
    rl, r32 = patch_pool_ref(xl, (H, W), k), patch_pool_ref(x32, (H, W), k)
    assert y.dtype == dtype
    assert_lowp("y", y, rl, r32, atol=1e-3)
    g = torch.randn_like(r32).to(dtype)
    gy, gl, g32 = grads(y, [xa], g)[0], grads(rl, [xl], g)[0], grads(r32, [x32], g.float())[0]
    assert_lowp("dx", gy, gl, g32, atol=1e-3)


def test_non_contiguous_and_empty_batch(backend: str) -> None:
    x = torch.randn(35, 2, 6).transpose(0, 1)  # (2, 35, 6), not contiguous
    assert not x.is_contiguous()
    assert_close32("y", patch_pool(x, (5, 7), 2, backend=backend), patch_pool_ref(x, (5, 7), 2))
    y0 = patch_pool(torch.randn(0, 35, 6), (5, 7), 2, backend=backend)
    assert y0.shape == (0, 12, 6)


def test_non_contiguous_grad(backend: str) -> None:
    # Autograd hands over expanded (sum) or transposed grads; both backwards must accept them.
    x = torch.randn(2, 35, 6, requires_grad=True)
    patch_pool(x, (5, 7), 2, backend=backend).sum().backward()
    want = grads(patch_pool_ref(x, (5, 7), 2), [x], torch.ones(2, 12, 6))[0]
    assert_close32("dx (expanded grad)", x.grad, want)
    g = torch.randn(6, 12, 2).permute(2, 1, 0)
    got = grads(patch_pool(x, (5, 7), 2, backend=backend), [x], g)[0]
    assert_close32("dx (permuted grad)", got, grads(patch_pool_ref(x, (5, 7), 2), [x], g)[0])


def test_backend_choice(monkeypatch) -> None:
    # auto never picks the interpreter; a named triton on CPU without it is a clear error.
    assert resolve("patch_pool", "auto", "cpu") == "cpp"
    assert _triton.auto_ok(torch.device("cuda", 0)) and not _triton.auto_ok(torch.device("cpu"))
    with pytest.raises(ValueError, match="backend 'triton' is unavailable on device meta: no Triton kernels"):
        resolve("patch_pool", "triton", "meta")
    monkeypatch.setattr(_triton, "INTERPRET", False)
    monkeypatch.setattr(_triton, "IMPORT_ERROR", None)
    with pytest.raises(ValueError, match="unavailable on device cpu: .*TRITON_INTERPRET=1"):
        patch_pool(torch.randn(1, 4, 2, device="cpu"), (2, 2), 2, backend="triton")


def test_opcheck_custom_op(backend: str) -> None:
    x = torch.randn(2, 15, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.mage_fast.patch_pool.default, (x, 3, 5, 2, backend))


@pytest.mark.parametrize("op", ["patch_pool_fwd", "patch_pool_bwd"])
def test_opcheck_cpp_ops(op: str, native: str) -> None:
    H, W, k = 5, 7, 3
    n = H * W if op == "patch_pool_fwd" else 2 * 3
    t = torch.randn(2, n, 4, requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.mage_fast, op).default, (t, H, W, k))


def test_gradcheck_cpp_ops_double(native: str) -> None:
    # The C++ kernels also take fp64, which lets gradcheck verify fwd/bwd are adjoint (twice).
    x = torch.randn(2, 5 * 7, 3, dtype=torch.float64, requires_grad=True)
    fwd = lambda t: torch.ops.mage_fast.patch_pool_fwd(t, 5, 7, 3)
    assert torch.autograd.gradcheck(fwd, (x,))
    assert torch.autograd.gradgradcheck(fwd, (x,))


@pytest.mark.parametrize(
    "x,grid,k,backend,match",
    [
        (torch.randn(35, 4), (5, 7), 2, "auto", "must be 3-D"),
        (torch.randn(2, 36, 4), (5, 7), 2, "auto", r"x.shape\[1\] must be H\*W"),
        (torch.randn(2, 35, 4), (5, 7), 0, "auto", "k must be a positive int"),
        (torch.randn(2, 35, 4), (5,), 2, "auto", r"grid must be \(H, W\)"),
        (torch.randn(2, 35, 4), (5, 7), 2.0, "auto", "k must be a positive int"),
        (torch.randn(2, 35, 4).double(), (5, 7), 2, "auto", "float32, bfloat16 or float16"),
        (torch.randn(2, 35, 4), (5, 7), 2, "nope", "unknown backend"),
        (torch.randn(2, 35, 4), (5, 7), 2, "cuda", "patch_pool: backend 'cuda' is unavailable on device cpu"),
    ],
)
def test_bad_input(x: torch.Tensor, grid, k, backend: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        patch_pool(x, grid, k, backend=backend)


def test_cpp_checks() -> None:
    x = torch.randn(2, 35, 4)
    with pytest.raises(RuntimeError, match=r"x.size\(1\) must be H\*W = 30"):
        torch.ops.mage_fast.patch_pool_fwd(x, 5, 6, 2)
    with pytest.raises(RuntimeError, match="k must be >= 1"):
        torch.ops.mage_fast.patch_pool_fwd(x, 5, 7, 0)
    with pytest.raises(RuntimeError, match="must be 3-D"):
        torch.ops.mage_fast.patch_pool_fwd(x[0], 5, 7, 2)
    with pytest.raises(RuntimeError, match=r"ceil\(H/k\)\*ceil\(W/k\) = 12"):
        torch.ops.mage_fast.patch_pool_bwd(torch.randn(2, 35, 4), 5, 7, 2)
    with pytest.raises(RuntimeError, match="floating point"):
        torch.ops.mage_fast.patch_pool_fwd(torch.ones(2, 35, 4, dtype=torch.int32), 5, 7, 2)
