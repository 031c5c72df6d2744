"""ian_projection, backend="triton" (the interpreter on CPU): vs the F.linear/gelu/layer_norm reference."""

from __future__ import annotations

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves
from test_ian_projection import NAMES, make
from tritonutil import on_device, requires_triton  # noqa: F401  (on_device: autouse fixture)

from mage_fast.ops import ian_projection
from mage_fast.ops.reference import ian_projection_ref

pytestmark = requires_triton


def make_sized(n: int, c: int, d: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """x (n, c) and parameters for D = d (odd, non-power-of-two sizes)."""
    ts = [torch.randn(n, c), torch.randn(d, c) / c**0.5, 0.1 * torch.randn(d), torch.randn(d, d) / d**0.5]
    ts += [0.1 * torch.randn(d), 1 + 0.1 * torch.randn(d), 0.1 * torch.randn(d)]
    return [t.to(dtype) for t in ts]


@pytest.mark.parametrize("shape", [(37, 24, 40), (1, 33, 45), (64, 17, 5)])
def test_fp32_forward_backward(shape: tuple[int, int, int]) -> None:
    # 32-wide tiles under the interpreter: these walk several M, N, K tiles and partial edges.
    ts = make_sized(*shape)
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend="triton"), ian_projection_ref(*r)
    assert_close32("y", y, yr, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_leading_dims_and_strided_grad() -> None:
    ts = make((2, 3, 5))
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend="triton"), ian_projection_ref(*r)
    assert y.shape == (2, 3, 5, 40)
    g = torch.randn(40, 5, 3, 2).permute(3, 2, 1, 0)  # a non-contiguous incoming gradient
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    ts = make((3, 13), dtype)
    a, lo, hi = leaves(*ts), leaves(*ts), leaves(*ts, dtype=torch.float32)
    y = ian_projection(*a, backend="triton")
    yl, y32 = ian_projection_ref(*lo), ian_projection_ref(*hi)
    assert y.dtype == dtype
    assert_lowp("y", y, yl, y32, atol=2e-3)
    g = torch.randn_like(y32).to(dtype)
    for name, ga, gl, g32 in zip(NAMES, grads(y, a, g), grads(yl, lo, g), grads(y32, hi, g.float())):
        assert ga.dtype == dtype
        assert_lowp(f"d{name}", ga, gl, g32, atol=2e-3)


@pytest.mark.parametrize("which", [["x"], ["ln_w", "ln_b"], ["w2", "b2"], ["w1", "b1"]])
def test_partial_requires_grad(which: list[str]) -> None:
    # The backward skips the GEMMs nobody needs; the grads that are asked for stay right.
    ts = make((11,))
    a = [t.clone().requires_grad_(n in which) for n, t in zip(NAMES, ts)]
    r = leaves(*ts)
    y, yr = ian_projection(*a, backend="triton"), ian_projection_ref(*r)
    g = torch.randn_like(yr)
    got = torch.autograd.grad(y, [t for t in a if t.requires_grad], g)
    want = [gr for n, gr in zip(NAMES, grads(yr, r, g)) if n in which]
    for ga, gr in zip(got, want):
        assert_close32("grad", ga, gr, atol=5e-5, rtol=5e-5)


def test_no_grad_path_matches() -> None:
    ts = make((9,))
    with torch.no_grad():
        y = ian_projection(*leaves(*ts), backend="triton")
    assert not y.requires_grad
    assert_close32("y", y, ian_projection_ref(*ts), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("save", [True, False])
def test_opcheck(save: bool) -> None:
    ts = make_sized(5, 6, 7)
    ts = leaves(*ts) if save else ts
    torch.library.opcheck(torch.ops.mage_fast.ian_projection.default, (*ts, 1e-5, save, "triton"))


def test_opcheck_backward_op() -> None:
    ts = make_sized(5, 6, 7)
    y, z1, xhat, rstd = torch.ops.mage_fast.ian_projection(*ts, 1e-5, True, "triton")
    needs = [True, False, True, True, False, True, True]
    args = (torch.randn_like(y), ts[0], ts[1], ts[3], ts[5], z1, xhat, rstd, needs, "triton")
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_backward.default, args)


def test_empty_batch() -> None:
    ts = make((0,))
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend="triton"), ian_projection(*r, backend="torch")
    assert y.shape == (0, 40)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr)  # zero weight grads, no NaN from empty reductions
