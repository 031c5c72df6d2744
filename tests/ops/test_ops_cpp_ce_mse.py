"""ce_mse, backend "cpp" (csrc/cpu/ce_mse.cpp) vs the full-logits F.cross_entropy + MSE reference:
fp32 tight, bf16/fp16 by the 2x rule (DESIGN.md §3), forward and backward, odd shapes and chunk
edges, ignore_index / all ignored / num_items, the fp32 target-class gradient, opcheck, entry checks."""

from __future__ import annotations

import importlib

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves

from mage_fast.ops import _ext, ce_mse
from mage_fast.ops.reference import ce_mse_ref

pytestmark = pytest.mark.skipif(not _ext.HAS_C, reason=_ext.C_IMPORT_ERROR or "")
ce_mod = importlib.import_module("mage_fast.ops.ce_mse")
N, V, H, M, D = 37, 101, 24, 5, 16
LAM = 0.7


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    # 4 rows per chunk: N = 37 walks 10 chunks, the last one partial.
    monkeypatch.setattr(ce_mod, "CHUNK_BYTES", 4000)
    assert ce_mod.chunk_rows(N, V) == 4


def make(dtype=torch.float32, n=N, v=V, m=M, ignored=0.3):
    hidden = torch.randn(n, H).to(dtype)
    weight = (torch.randn(v, H) / H**0.5).to(dtype)
    labels = torch.randint(0, v, (n,))
    labels[torch.rand(n) < ignored] = -100
    img = torch.randn(m, D).to(dtype)
    tgt = torch.randn(m, D).to(dtype)
    mask = torch.rand(m) < 0.6
    if m:
        mask[0] = True
    return hidden, weight, labels, img, tgt, mask


def combo(out):
    loss, ce, mse = out
    return 0.5 * loss + 2.0 * ce + LAM * mse / 3.0


def run(fn, data, dtype=None, **kw):
    h, w, lab, img, tgt, mask = data
    h, w, img = leaves(h, w, img, dtype=dtype)
    tgt = tgt.to(dtype or tgt.dtype)
    out = fn(h, w, lab, img, tgt, mask, LAM, **kw)
    return out, grads(combo(out), [h, w, img], torch.ones(()))


@pytest.mark.parametrize("n,v,m", [(37, 101, 5), (1, 7, 0), (5, 3, 1), (64, 257, 3)])
def test_fp32_forward_backward(n, v, m, native: str) -> None:
    data = make(n=n, v=v, m=m)
    (out, gs), (ref, gr) = run(ce_mse, data, backend=native), run(ce_mse_ref, data)
    for name, a, b in zip(["loss", "ce", "mse"], out, ref):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_close32(name, a, b)
    for name, a, b in zip(["dhidden", "dweight", "dimg"], gs, gr):
        assert_close32(name, a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype, native: str) -> None:
    data = make(dtype)
    (out, gs), (rl, gl) = run(ce_mse, data, backend=native), run(ce_mse_ref, data)
    r32, g32 = run(ce_mse_ref, data, dtype=torch.float32)
    for name, a, b, c in zip(["loss", "ce", "mse"], out, rl, r32):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_lowp(name, a, b, c, atol=1e-4)
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], gs, gl, g32):
        assert a.dtype == dtype
        assert_lowp(name, a, b, c, atol=1e-3)


def test_num_items_and_int32_labels(native: str) -> None:
    data = make()
    h, w, lab, img, tgt, mask = data
    data32 = (h, w, lab.int(), img, tgt, mask)
    (out, gs), (ref, gr) = run(ce_mse, data32, backend=native, num_items=100), run(ce_mse_ref, data, num_items=100)
    for name, a, b in zip(["loss", "ce", "mse", "dhidden", "dweight", "dimg"], [*out, *gs], [*ref, *gr]):
        assert_close32(name, a, b)


def test_all_ignored_is_zero_not_nan(native: str) -> None:
    h, w, lab, img, tgt, mask = make()
    lab = torch.full_like(lab, -100)
    mask = torch.zeros_like(mask)
    (out, gs) = run(ce_mse, (h, w, lab, img, tgt, mask), backend=native)
    for t in (*out, *gs):
        assert torch.isfinite(t).all() and (t == 0).all()


def test_custom_ignore_index(native: str) -> None:
    h, w, lab, img, tgt, mask = make()
    lab[lab == -100] = 5
    lab[::3] = 5
    (out, gs), (ref, gr) = (
        run(ce_mse, (h, w, lab, img, tgt, mask), backend=native, ignore_index=5),
        run(ce_mse_ref, (h, w, lab, img, tgt, mask), ignore_index=5),
    )
    for name, a, b in zip(["loss", "ce", "mse", "dhidden", "dweight", "dimg"], [*out, *gs], [*ref, *gr]):
        assert_close32(name, a, b)


def test_confident_prediction_target_gradient_fp32(native: str) -> None:
    # p_target ~ 1 - 1e-6: (p - 1) must come out as ~ -1e-6, not 0 (fp32 target-class gradient).
    w = torch.zeros(4, 2)
    w[0, 0] = 1.0
    h = torch.tensor([[14.5, 0.0]], requires_grad=True)
    lab = torch.tensor([0])
    img, tgt, mask = torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.bool)
    loss = ce_mse(h, w, lab, img, tgt, mask, 0.0, backend=native)[0]
    (g,) = torch.autograd.grad(loss, [h])
    p_other = torch.exp(torch.tensor(-14.5, dtype=torch.float64))
    exact = -(3 * p_other / (1 + 3 * p_other)).item()  # d loss / d h[0,0] = p_0 - 1
    print(f"target grad {g[0, 0].item():.6e} exact {exact:.6e}")
    assert abs(g[0, 0].item() - exact) <= 1e-3 * abs(exact)


@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False), (True, False, True)])
def test_opcheck_cpp_op(flags, native: str) -> None:
    h, w, lab, img, tgt, mask = make(n=9, v=13, m=3)
    h, w, img = leaves(h, w, img)
    args = (h, w, lab, img, tgt, mask, LAM, -100, None, *flags, 4)
    torch.library.opcheck(torch.ops.mage_fast.ce_mse_fwd.default, args)
    torch.library.opcheck(torch.ops.mage_fast.ce_mse_fwd.default, (*args[:8], 50.0, *args[9:]))


def test_opcheck_public_op(native: str) -> None:
    h, w, lab, img, tgt, mask = make(n=9, v=13, m=3)
    h, w, img = leaves(h, w, img)
    args = (h, w, lab, img, tgt, mask, LAM, -100, None, True, True, True, native)
    torch.library.opcheck(torch.ops.mage_fast.ce_mse.default, args)


def test_cpp_entry_checks() -> None:
    h, w, lab, img, tgt, mask = make(n=6, v=11, m=2)
    lab[2] = 11
    with pytest.raises(RuntimeError, match=r"label 11 at position 2 is out of bounds"):
        torch.ops.mage_fast.ce_mse_fwd(h, w, lab, img, tgt, mask, LAM, -100, None, False, False, False, 4)
    lab[2] = 0
    with pytest.raises(RuntimeError, match="chunk_rows must be >= 1"):
        torch.ops.mage_fast.ce_mse_fwd(h, w, lab, img, tgt, mask, LAM, -100, None, False, False, False, 0)
    with pytest.raises(RuntimeError, match=r"weight must be \(V, 24\)"):
        torch.ops.mage_fast.ce_mse_fwd(h, w[:, :5], lab, img, tgt, mask, LAM, -100, None, False, False, False, 4)
    with pytest.raises(RuntimeError, match=r"img_mask must be \(M,\) bool"):
        torch.ops.mage_fast.ce_mse_fwd(h, w, lab, img, tgt, mask.int(), LAM, -100, None, False, False, False, 4)
    with pytest.raises(ValueError, match="backend 'cpp' is unavailable on device meta"):
        ce_mse(*[t.to("meta") for t in (h, w, lab, img, tgt, mask)], LAM, backend="cpp")
