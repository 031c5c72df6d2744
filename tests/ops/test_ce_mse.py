"""ce_mse: the chunked torch backend vs full-logits F.cross_entropy + MSE reference."""

from __future__ import annotations

import importlib

import pytest
import torch
from opsutil import assert_close32, assert_lowp, grads, leaves

from mage_fast.ops import ce_mse
from mage_fast.ops.reference import ce_mse_ref

# The package attribute `mage_fast.ops.ce_mse` is the function; the module comes from importlib.
ce_mod = importlib.import_module("mage_fast.ops.ce_mse")
N, V, H, M, D = 37, 101, 24, 5, 16
LAM = 0.7


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    # 2 * rows * V * 4 bytes <= 4000 -> 4 rows per chunk: N = 37 walks 10 chunks, the last partial.
    monkeypatch.setattr(ce_mod, "CHUNK_BYTES", 4000)
    assert ce_mod.chunk_rows(N, V) == 4


def make(dtype=torch.float32, n=N, m=M, ignored=0.3):
    """hidden, weight, labels (random ignored places), img, img_target, img_mask."""
    hidden = torch.randn(n, H).to(dtype)
    weight = (torch.randn(V, H) / H**0.5).to(dtype)
    labels = torch.randint(0, V, (n,))
    labels[torch.rand(n) < ignored] = -100
    img = torch.randn(m, D).to(dtype)
    tgt = torch.randn(m, D).to(dtype)
    mask = torch.rand(m) < 0.6
    if m:
        mask[0] = True
    return hidden, weight, labels, img, tgt, mask


def combo(out):
    """A caller's mix of the outputs, as in `world*ce + lam*mse/gas` (plus loss)."""
    loss, ce, mse = out
    return 0.5 * loss + 2.0 * ce + LAM * mse / 3.0


def run(fn, data, dtype=None, **kw):
    """Outputs and grads of combo() w.r.t. hidden, weight, img."""
    h, w, lab, img, tgt, mask = data
    h, w, img = leaves(h, w, img, dtype=dtype)
    tgt = tgt.to(dtype or tgt.dtype)
    out = fn(h, w, lab, img, tgt, mask, LAM, **kw)
    return out, grads(combo(out), [h, w, img], torch.ones(()))


def test_fp32_forward_backward() -> None:
    data = make()
    (out, gs), (ref, gr) = run(ce_mse, data, backend="torch"), run(ce_mse_ref, data)
    for name, a, b in zip(["loss", "ce", "mse"], out, ref):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_close32(name, a, b)
    for name, a, b in zip(["dhidden", "dweight", "dimg"], gs, gr):
        assert_close32(name, a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    data = make(dtype)
    (out, gs), (rl, gl) = run(ce_mse, data), run(ce_mse_ref, data)
    r32, g32 = run(ce_mse_ref, data, dtype=torch.float32)
    for name, a, b, c in zip(["loss", "ce", "mse"], out, rl, r32):
        assert a.dtype == torch.float32 and a.dim() == 0  # fp32 scalars whatever the input dtype
        assert_lowp(name, a, b, c, atol=1e-4)
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], gs, gl, g32):
        assert a.dtype == dtype
        assert_lowp(name, a, b, c, atol=1e-3)


@pytest.mark.parametrize("n", [1, 4, 5])
def test_chunk_edges(n: int) -> None:
    data = make(n=n, ignored=0.0)
    (out, gs), (ref, gr) = run(ce_mse, data), run(ce_mse_ref, data)
    for a, b in zip([*out, *gs], [*ref, *gr]):
        assert_close32("value", a, b)


def test_all_tokens_ignored() -> None:
    h, w, lab, img, tgt, mask = make()
    lab[:] = -100
    out, (dh, dw, di) = run(ce_mse, (h, w, lab, img, tgt, mask))
    assert out[1].item() == 0.0
    assert dh.abs().max() == 0 and dw.abs().max() == 0
    assert all(torch.isfinite(t).all() for t in (*out, dh, dw, di))
    ref, (_, _, dir_) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert_close32("loss", out[0], ref[0])
    assert_close32("dimg", di, dir_)


@pytest.mark.parametrize("case", ["no_images", "mask_all_false"])
def test_no_image_target(case: str) -> None:
    h, w, lab, img, tgt, mask = make(m=0 if case == "no_images" else M)
    mask[:] = False
    out, (dh, _, di) = run(ce_mse, (h, w, lab, img, tgt, mask))
    ref, (dhr, _, _) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert out[2].item() == 0.0 and di.abs().sum() == 0 and di.shape == img.shape
    assert_close32("loss", out[0], ref[0])
    assert_close32("dhidden", dh, dhr)


def test_num_items_accumulation() -> None:
    # Two micro-batches with num_items = labelled tokens of both: summed grads == one big batch.
    h, w, lab, img, tgt, mask = make(n=2 * N)
    total = int((lab != -100).sum())
    wa = w.clone().requires_grad_()
    ha = h.clone().requires_grad_()
    ce_sum = 0.0
    for s in (slice(0, N), slice(N, 2 * N)):
        _, ce, _ = ce_mse(ha[s], wa, lab[s], img, tgt, mask, LAM, num_items=torch.tensor(total))
        ce.backward()
        ce_sum += ce.item()
    hb, wb = leaves(h, w)
    _, ce_big, _ = ce_mse(hb, wb, lab, img, tgt, mask, LAM)
    ce_big.backward()
    assert abs(ce_sum - ce_big.item()) < 1e-5
    assert_close32("dweight", wa.grad, wb.grad)
    assert_close32("dhidden", ha.grad, hb.grad)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_partial_requires_grad(needs: tuple[bool, bool, bool]) -> None:
    h, w, lab, img, tgt, mask = make()
    xs = [t.clone().requires_grad_(n) for t, n in zip((h, w, img), needs)]
    out = ce_mse(xs[0], xs[1], lab, xs[2], tgt, mask, LAM)
    _, gr = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    (x,), (g,) = [x for x in xs if x.requires_grad], [g for g, n in zip(gr, needs) if n]
    assert_close32("grad", torch.autograd.grad(combo(out), x)[0], g)


def test_no_grad() -> None:
    data = make()
    with torch.no_grad():
        out = ce_mse(*leaves(*data[:2]), data[2], *leaves(data[3]), *data[4:], LAM)
    assert not any(t.requires_grad for t in out)
    for a, b in zip(out, ce_mse_ref(*data, LAM)):
        assert_close32("value", a, b)


@pytest.mark.parametrize("num_items", [None, 50.0])
def test_opcheck(num_items) -> None:
    h, w, lab, img, tgt, mask = make(n=9, m=3)
    h, w, img = leaves(h, w, img)
    args = (h, w, lab, img, tgt, mask, LAM, -100, num_items, True, True, True, "torch")
    torch.library.opcheck(torch.ops.mage_fast.ce_mse.default, args)


def _bad(i: int, value, match: str, backend: str = "auto"):
    return i, value, match, backend


@pytest.mark.parametrize(
    "i,value,match,backend",
    [
        _bad(0, torch.randn(N, H + 1), r"weight must be \(V, 25\)"),
        _bad(1, torch.randn(V, H).bfloat16(), "weight dtype torch.bfloat16 does not match"),
        _bad(2, torch.randint(0, V, (N + 1,)), r"labels must have shape \(37,\)"),
        _bad(2, torch.rand(N), "labels must be int64 or int32"),
        _bad(4, torch.randn(M, D + 1), r"img_target must have shape \(5, 16\)"),
        _bad(4, torch.randn(M, D, requires_grad=True), "must not require grad"),
        _bad(5, torch.ones(M), "img_mask must be bool"),
        _bad(5, torch.ones(M + 1, dtype=torch.bool), r"img_mask must have shape \(5,\)"),
        _bad(3, torch.randn(M, D, device="meta"), "all tensors must be on one device"),
        _bad(0, torch.randn(N, H), "ce_mse: backend 'cuda' is unavailable on device cpu", "cuda"),
    ],
)
def test_bad_input(i: int, value: torch.Tensor, match: str, backend: str) -> None:
    args = list(make())
    args[i] = value
    with pytest.raises(ValueError, match=match):
        ce_mse(*args, LAM, backend=backend)


def test_negative_num_items() -> None:
    with pytest.raises(ValueError, match="num_items must be >= 0"):
        ce_mse(*make(), LAM, num_items=-1)


def test_chunk_rule() -> None:
    assert ce_mod.chunk_rows(10**6, 32000, budget=64 * 2**20) == 262
    assert ce_mod.chunk_rows(3, 32000, budget=64 * 2**20) == 3
    assert ce_mod.chunk_rows(100, 10**9, budget=1) == 1


def test_label_out_of_range_raises() -> None:
    # No silent wrong answer: an id >= V (or a negative id other than ignore_index) fails the gather.
    args = list(make())
    args[2] = args[2].clone()
    args[2][3] = V
    with pytest.raises(RuntimeError, match="out of bounds"):
        ce_mse(*args, LAM)


def test_never_builds_full_logits(monkeypatch) -> None:
    # Every GEMM output of the forward is at most one chunk (4 rows) of logits, never N x V.
    shapes = []
    real = ce_mod.mm_f32

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(ce_mod, "mm_f32", spy)
    run(ce_mse, make())
    logits = [s for s in shapes if s[1] == V]
    assert len(logits) == 10 and max(s[0] for s in logits) == 4
