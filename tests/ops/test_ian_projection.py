"""ian_projection: the torch backend vs the F.linear/F.gelu/F.layer_norm reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opsutil import assert_close32, assert_lowp, grads, leaves

from mage_fast.ops import ian_projection
from mage_fast.ops.ian_projection import gelu_grad
from mage_fast.ops.reference import ian_projection_ref

C, D = 24, 40
NAMES = ["x", "w1", "b1", "w2", "b2", "ln_w", "ln_b"]


def make(lead: tuple[int, ...], dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """x (*lead, C) and the six parameters, rounded to `dtype`."""
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


@pytest.mark.parametrize("lead", [(37,), (2, 3, 5), (1,)])
def test_fp32_forward_backward(lead: tuple[int, ...]) -> None:
    ts = make(lead)
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend="torch"), ian_projection_ref(*r)
    assert y.shape == (*lead, D)
    assert_close32("y", y, yr)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    ts = make((3, 13), dtype)
    a, lo, hi = leaves(*ts), leaves(*ts), leaves(*ts, dtype=torch.float32)
    y = ian_projection(*a, backend="torch")
    yl, y32 = ian_projection_ref(*lo), ian_projection_ref(*hi)
    assert y.dtype == dtype
    assert_lowp("y", y, yl, y32, atol=2e-3)
    g = torch.randn_like(y32).to(dtype)
    for name, ga, gl, g32 in zip(NAMES, grads(y, a, g), grads(yl, lo, g), grads(y32, hi, g.float())):
        assert ga.dtype == dtype
        assert_lowp(f"d{name}", ga, gl, g32, atol=2e-3)


@pytest.mark.parametrize("which", [["x"], ["ln_w", "ln_b"], ["w2"], ["w1", "b1"]])
def test_partial_requires_grad(which: list[str]) -> None:
    # Backward skips the GEMMs nobody needs; the grads that are asked for stay right.
    ts = make((11,))
    a = [t.clone().requires_grad_(n in which) for n, t in zip(NAMES, ts)]
    r = leaves(*ts)
    y, yr = ian_projection(*a), ian_projection_ref(*r)
    g = torch.randn_like(yr)
    need = [t for t in a if t.requires_grad]
    got = torch.autograd.grad(y, need, g)
    want = [gr for n, gr in zip(NAMES, grads(yr, r, g)) if n in which]
    for ga, gr in zip(got, want):
        assert_close32("grad", ga, gr, atol=2e-5, rtol=2e-5)


def test_no_grad_path_matches() -> None:
    ts = make((9,))
    with torch.no_grad():
        y = ian_projection(*leaves(*ts))
    assert not y.requires_grad
    assert_close32("y", y, ian_projection_ref(*ts))


def test_gelu_grad_exact() -> None:
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(F.gelu(z).sum(), z)
    torch.testing.assert_close(gelu_grad(z.detach()), want)


@pytest.mark.parametrize("save", [True, False])
def test_opcheck(save: bool) -> None:
    # save=False is the inference path: inputs that need no grad.
    ts = leaves(*make((7,))) if save else make((7,))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection.default, (*ts, 1e-5, save, "torch"))


def _bad(**change) -> list[torch.Tensor]:
    ts = dict(zip(NAMES, make((5,))))
    ts.update(change)
    return [ts[n] for n in NAMES]


@pytest.mark.parametrize(
    "args,backend,match",
    [
        (_bad(w1=torch.randn(D, C + 1)), "auto", r"w1 must have shape \(40, 24\)"),
        (_bad(w2=torch.randn(D, D + 1)), "auto", r"w2 must have shape \(40, 40\)"),
        (_bad(b1=torch.randn(D + 1)), "auto", r"b1 must have shape \(40,\)"),
        (_bad(ln_w=torch.randn(D).bfloat16()), "auto", "ln_w dtype torch.bfloat16 does not match"),
        (_bad(x=torch.randn(5, C).double()), "auto", "float32, bfloat16 or float16"),
        (_bad(b2=torch.randn(D, device="meta")), "auto", "all tensors must be on one device"),
        ([t.to("meta") for t in _bad()], "cpp", "ian_projection: backend 'cpp' is unavailable on device meta"),
        (_bad(), "cuda", "ian_projection: backend 'cuda' is unavailable on device cpu"),
    ],
)
def test_bad_input(args: list[torch.Tensor], backend: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ian_projection(*args, backend=backend)
