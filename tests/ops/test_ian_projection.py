"""ian_projection on every backend (the `backend` fixture) vs the F.linear/F.gelu/F.layer_norm
reference: fp32 tight, bf16/fp16 by the 2x rule, forward and backward, odd shapes (several 32-wide
interpreter tiles with partial edges), strided grads, partial grads, opcheck; then the native C++
ops on their own and the input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opsutil import assert_close32, assert_lowp, grads, leaves
from tritonutil import requires_triton

from mage_fast.ops import ian_projection
from mage_fast.ops.ian_projection import gelu_grad
from mage_fast.ops.reference import ian_projection_ref

C, D = 24, 40
NAMES = ["x", "w1", "b1", "w2", "b2", "ln_w", "ln_b"]


def make(lead: tuple[int, ...], c: int = C, d: int = D, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """x (*lead, c) and the six parameters for D = d, rounded to `dtype`."""
    ts = [
        torch.randn(*lead, c),
        torch.randn(d, c) / c**0.5,
        0.1 * torch.randn(d),
        torch.randn(d, d) / d**0.5,
        0.1 * torch.randn(d),
        1 + 0.1 * torch.randn(d),
        0.1 * torch.randn(d),
    ]
    return [t.to(dtype) for t in ts]


@pytest.mark.parametrize("lead,c,d", [((37,), 24, 40), ((2, 3, 5), 7, 13), ((1,), 1, 3), ((65,), 33, 97)])
def test_fp32_forward_backward(backend: str, lead, c: int, d: int) -> None:
    ts = make(lead, c, d)
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend=backend), ian_projection_ref(*r)
    assert y.shape == (*lead, d)
    assert_close32("y", y, yr, atol=2e-5, rtol=2e-5)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_strided_incoming_grad(backend: str) -> None:
    ts = make((2, 3, 5))
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend=backend), ian_projection_ref(*r)
    g = torch.randn(D, 5, 3, 2).permute(3, 2, 1, 0)  # a non-contiguous incoming gradient
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_backward_materialises_no_zero_gradients(backend: str) -> None:
    # z1, xhat and rstd are saved outputs nobody differentiates: autograd must not build a zero
    # gradient of each (two N x D buffers) in every backward.
    a = leaves(*make((300,)))
    y = ian_projection(*a, backend=backend)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if y.is_cuda else [])
    with torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        y.backward(torch.randn_like(y))
    zeros = [e for e in prof.events() if e.name in ("aten::zeros", "aten::zeros_like")]
    biggest = max((max(e.cpu_memory_usage, e.device_memory_usage) for e in zeros), default=0)
    assert biggest < y.numel() * 4, f"the backward allocated a zero gradient of {biggest} bytes"
    _, z1, xhat, rstd = torch.ops.mage_fast.ian_projection(*a, 1e-5, True, backend)
    assert not (z1.requires_grad or xhat.requires_grad or rstd.requires_grad)  # saved, not results


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend: str, dtype: torch.dtype) -> None:
    ts = make((3, 13), dtype=dtype)
    a, lo, hi = leaves(*ts), leaves(*ts), leaves(*ts, dtype=torch.float32)
    y = ian_projection(*a, backend=backend)
    yl, y32 = ian_projection_ref(*lo), ian_projection_ref(*hi)
    assert y.dtype == dtype
    assert_lowp("y", y, yl, y32, atol=2e-3)
    g = torch.randn_like(y32).to(dtype)
    for name, ga, gl, g32 in zip(NAMES, grads(y, a, g), grads(yl, lo, g), grads(y32, hi, g.float())):
        assert ga.dtype == dtype
        assert_lowp(f"d{name}", ga, gl, g32, atol=2e-3)


def test_matches_torch_backend_bf16(backend: str) -> None:
    # Same rounding points as the torch backend (the template): near-identical in bf16.
    ts = make((19,), dtype=torch.bfloat16)
    a, b = leaves(*ts), leaves(*ts)
    y, yt = ian_projection(*a, backend=backend), ian_projection(*b, backend="torch")
    assert (y.float() - yt.float()).abs().max() <= 1e-2
    g = torch.randn_like(y)
    for name, ga, gt in zip(NAMES, grads(y, a, g), grads(yt, b, g)):
        scale = gt.float().abs().max().clamp(min=1)
        assert (ga.float() - gt.float()).abs().max() <= 2e-2 * scale, name


@pytest.mark.parametrize("which", [["x"], ["ln_w", "ln_b"], ["w2"], ["w2", "b2"], ["w1", "b1"]])
def test_partial_requires_grad(backend: str, which: list[str]) -> None:
    # The backward skips the GEMMs nobody needs; the grads that are asked for stay right.
    ts = make((11,))
    a = [t.clone().requires_grad_(n in which) for n, t in zip(NAMES, ts)]
    r = leaves(*ts)
    y, yr = ian_projection(*a, backend=backend), ian_projection_ref(*r)
    g = torch.randn_like(yr)
    got = torch.autograd.grad(y, [t for t in a if t.requires_grad], g)
    want = [gr for n, gr in zip(NAMES, grads(yr, r, g)) if n in which]
    for name, ga, gr in zip(which, got, want):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_no_grad_and_empty_batch(backend: str) -> None:
    ts = make((9,))
    with torch.no_grad():
        y = ian_projection(*leaves(*ts), backend=backend)
    assert not y.requires_grad
    assert_close32("y", y, ian_projection_ref(*ts), atol=2e-5, rtol=2e-5)
    e = make((0,))
    a, r = leaves(*e), leaves(*e)
    y, yr = ian_projection(*a, backend=backend), ian_projection(*r, backend="torch")
    assert y.shape == (0, D)
    for name, ga, gr in zip(NAMES, grads(y, a, torch.randn_like(yr)), grads(yr, r, torch.randn_like(yr))):
        assert_close32(f"d{name} (empty)", ga, gr)  # zero weight grads, no NaN from empty reductions


@pytest.mark.parametrize("save", [True, False])
def test_opcheck(backend: str, save: bool) -> None:
    # save=False is the inference path: inputs that need no grad.
    ts = make((5,), 6, 7)
    ts = leaves(*ts) if save else ts
    torch.library.opcheck(torch.ops.mage_fast.ian_projection.default, (*ts, 1e-5, save, backend))


@requires_triton
def test_opcheck_opaque_backward_op() -> None:
    ts = make((5,), 6, 7)
    y, z1, xhat, rstd = torch.ops.mage_fast.ian_projection(*ts, 1e-5, True, "triton")
    needs = [True, False, True, True, False, True, True]
    args = (torch.randn_like(y), ts[0], ts[1], ts[3], ts[5], z1, xhat, rstd, needs, "triton")
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_backward.default, args)


@requires_triton
def test_triton_wide_rows_take_the_torch_layernorm_backward(monkeypatch) -> None:
    # Rows wider than LN_BWD_MAX_D (the kernel would spill on sm_90) take the torch formulas.
    from mage_fast.kernels import _launch

    monkeypatch.setattr(_launch, "LN_BWD_MAX_D", 16)
    ts = make((9,))
    a, r = leaves(*ts), leaves(*ts)
    y, yr = ian_projection(*a, backend="triton"), ian_projection_ref(*r)
    g = torch.randn_like(yr)
    for name, ga, gr in zip(NAMES, grads(y, a, g), grads(yr, r, g)):
        assert_close32(f"d{name}", ga, gr, atol=5e-5, rtol=5e-5)


def test_native_no_grad_saves_nothing(native: str) -> None:
    out = torch.ops.mage_fast.ian_projection_fwd(*make((5,)), 1e-5, False)
    assert out[0].shape == (5, D) and all(t.numel() == 0 for t in out[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck_native_ops(dtype: torch.dtype, native: str) -> None:
    ts = leaves(*make((7,), 8, 12, dtype))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_fwd.default, (*ts, 1e-5, True))
    torch.library.opcheck(torch.ops.mage_fast.ian_projection_fwd.default, (*[t.detach() for t in ts], 1e-5, False))
    y, z1, xhat, rstd = torch.ops.mage_fast.ian_projection_fwd(*[t.detach() for t in ts], 1e-5, True)
    dy = torch.randn_like(y)
    x, w1, _, w2, _, ln_w, _ = [t.detach() for t in ts]
    for needs in ([True] * 7, [False, True, False, True, False, False, True]):
        args = (dy, x, w1, w2, ln_w, z1, xhat, rstd, needs)
        torch.library.opcheck(torch.ops.mage_fast.ian_projection_bwd.default, args)


def test_native_entry_checks(native: str) -> None:
    x, w1, b1, w2, b2, lw, lb = make((5,))
    fwd = torch.ops.mage_fast.ian_projection_fwd
    with pytest.raises(RuntimeError, match=r"w1 must be \(D, 24\)"):
        fwd(x, w1[:, :3], b1, w2, b2, lw, lb, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"ln_b must be \(40\)"):
        fwd(x, w1, b1, w2, b2, lw, lb[:3], 1e-5, False)
    with pytest.raises(RuntimeError, match=r"b2 must match x's dtype"):
        fwd(x, w1, b1, w2, b2.double(), lw, lb, 1e-5, False)
    with pytest.raises(RuntimeError, match="eps must be >= 0"):
        fwd(x, w1, b1, w2, b2, lw, lb, -1.0, False)


def test_gelu_grad_exact() -> None:
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(F.gelu(z).sum(), z)
    torch.testing.assert_close(gelu_grad(z.detach()), want)


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
