"""ian_projection, backend "cpp" (csrc/cpu/ian_projection.cpp) vs the F.linear/F.gelu/F.layer_norm
reference: fp32 tight, bf16/fp16 by the 2x rule (DESIGN.md §3), forward and backward, odd shapes,
partial grads, opcheck of the C++ ops, C++ entry checks."""

from __future__ import annotations

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves

from mage_fast.ops import _ext, ian_projection
from mage_fast.ops.reference import ian_projection_ref

pytestmark = pytest.mark.skipif(not _ext.HAS_C, reason=_ext.C_IMPORT_ERROR or "")
NAMES = ["x", "w1", "b1", "w2", "b2", "ln_w", "ln_b"]


def make(lead: tuple[int, ...], C: int = 24, D: int = 40, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    ts = [
        torch.randn(*lead, C),
        torch.randn(D, C) / C**0.5,
        0.1 * torch.randn(D),
        torch.randn(D, D) / D**0.5,
        0.1 * torch.randn(D),
        1 + 0.1 * torch.randn(D),
        0.1 * torch.randn(D),
    ]
    return [t.to(dtype) for t in ts]


@pytest.mark.parametrize("lead,C,D", [((37,), 24, 40), ((2, 3, 5), 7, 13), ((1,), 1, 3), ((65,), 33, 97)])
def test_fp32_forward_backward(lead, C, D, native: str) -> None:
    ts = make(lead, C, D)
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend=native), ian_projection_ref(*r)
    assert y.shape == (*lead, D)
    assert_close32("y", y, yr, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype, native: str) -> None:
    ts = make((3, 13), 24, 40, dtype)
    a, lo, hi = leaves(*ts), leaves(*ts), leaves(*ts, dtype=torch.float32)
    y = ian_projection(*a, backend=native)
    yl, y32 = ian_projection_ref(*lo), ian_projection_ref(*hi)
    assert y.dtype == dtype
    assert_lowp("y", y, yl, y32, atol=2e-3)
    g = torch.randn_like(y32).to(dtype)
    for name, ga, gl, g32 in zip(NAMES, grads(y, a, g), grads(yl, lo, g), grads(y32, hi, g.float())):
        assert ga.dtype == dtype
        assert_lowp(f"d{name}", ga, gl, g32, atol=2e-3)


def test_matches_torch_backend_bf16(native: str) -> None:
    # Same rounding points as the torch backend (the template): near-identical in bf16.
    ts = make((19,), 24, 40, torch.bfloat16)
    a, b = leaves(*ts), leaves(*ts)
    y, yt = ian_projection(*a, backend=native), ian_projection(*b, backend="torch")
    assert (y.float() - yt.float()).abs().max() <= 1e-2
    g = torch.randn_like(y)
    for name, ga, gt in zip(NAMES, grads(y, a, g), grads(yt, b, g)):
        scale = gt.float().abs().max().clamp(min=1)
        assert (ga.float() - gt.float()).abs().max() <= 2e-2 * scale, name


@pytest.mark.parametrize("which", [["x"], ["ln_w", "ln_b"], ["w2", "b2"], ["w1", "b1"]])
def test_partial_requires_grad(which: list[str], native: str) -> None:
    ts = make((11,))
    a = [t.clone().requires_grad_(n in which) for n, t in zip(NAMES, ts)]
    r = [t.clone().requires_grad_(n in which) for n, t in zip(NAMES, ts)]
    y, yr = ian_projection(*a, backend=native), ian_projection_ref(*r)
    g = torch.randn_like(yr)
    ia = [t for t in a if t.requires_grad]
    ir = [t for t in r if t.requires_grad]
    for name, ga, gr in zip(which, torch.autograd.grad(y, ia, g), torch.autograd.grad(yr, ir, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_no_grad_saves_nothing(native: str) -> None:
    ts = make((5,))
    out = torch.ops.mage_fast.ian_projection_fwd(*ts, 1e-5, False)
    assert out[0].shape == (5, 40) and all(t.numel() == 0 for t in out[1:])
    with torch.no_grad():
        y = ian_projection(*leaves(*ts), backend=native)
    assert_close32("y", y, ian_projection_ref(*ts), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_cpp_ops(dtype: torch.dtype, native: str) -> None:
    ts = leaves(*make((7,), 8, 12, dtype))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_fwd.default, (*ts, 1e-5, True))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_fwd.default, (*[t.detach() for t in ts], 1e-5, False))
    y, z1, xhat, rstd = torch.ops.mage_fast.ian_projection_fwd(*[t.detach() for t in ts], 1e-5, True)
    dy = torch.randn_like(y)
    x, w1, _, w2, _, ln_w, _ = [t.detach() for t in ts]
    for needs in ([True] * 7, [False, True, False, True, False, False, True]):
        torch.library.opcheck(torch.ops.mage_fast.ian_projection_bwd.default,
                              (dy, x, w1, w2, ln_w, z1, xhat, rstd, needs))  # fmt: skip


def test_opcheck_public_op(native: str) -> None:
    ts = leaves(*make((7,), 8, 12))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection.default, (*ts, 1e-5, True, native))


def test_cpp_entry_checks() -> None:
    x, w1, b1, w2, b2, lw, lb = make((5,))
    with pytest.raises(RuntimeError, match=r"w1 must be \(D, 24\)"):
        torch.ops.mage_fast.ian_projection_fwd(x, w1[:, :3], b1, w2, b2, lw, lb, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"ln_b must be \(40\)"):
        torch.ops.mage_fast.ian_projection_fwd(x, w1, b1, w2, b2, lw, lb[:3], 1e-5, False)
    with pytest.raises(RuntimeError, match=r"b2 must match x's dtype"):
        torch.ops.mage_fast.ian_projection_fwd(x, w1, b1, w2, b2.double(), lw, lb, 1e-5, False)
    with pytest.raises(ValueError, match="backend 'cpp' is unavailable on device meta"):
        ian_projection(*[t.to("meta") for t in make((5,))], backend="cpp")
