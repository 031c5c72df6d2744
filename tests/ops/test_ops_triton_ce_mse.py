"""ce_mse, backend="triton" (the interpreter on CPU): vs the full-logits F.cross_entropy + MSE reference."""

from __future__ import annotations

import importlib

import pytest
import torch
from opsutil import assert_close32, assert_lowp, diffs, leaves
from test_ce_mse import LAM, H, M, N, V, combo, make, run
from tritonutil import on_device, requires_triton  # noqa: F401  (on_device: autouse fixture)

from mage_fast.ops import ce_mse
from mage_fast.ops.reference import ce_mse_ref

ce_mod = importlib.import_module("mage_fast.ops.ce_mse")
kern_mod = importlib.import_module("mage_fast.kernels.ce_mse")
pytestmark = requires_triton
TRITON = {"backend": "triton"}


@pytest.fixture(autouse=True)
def _chunks(monkeypatch):
    # 2 * rows * V * 4 bytes <= 13000 -> 16 rows: N = 37 walks chunks of 16, 16 and 5 tokens; the
    # interpreter's 32-wide vocabulary tiles split V = 101 into 4 tiles, the last partial.
    monkeypatch.setattr(ce_mod, "CHUNK_BYTES", 13000)
    assert ce_mod.chunk_rows(N, V) == 16


def test_fp32_forward_backward() -> None:
    data = make()  # ~30% of the tokens ignored, at random places
    (out, gs), (ref, gr) = run(ce_mse, data, **TRITON), run(ce_mse_ref, data)
    for name, a, b in zip(["loss", "ce", "mse"], out, ref):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_close32(name, a, b)
    for name, a, b in zip(["dhidden", "dweight", "dimg"], gs, gr):
        assert_close32(name, a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype: torch.dtype) -> None:
    data = make(dtype)
    (out, gs), (rl, gl) = run(ce_mse, data, **TRITON), run(ce_mse_ref, data)
    r32, g32 = run(ce_mse_ref, data, dtype=torch.float32)
    for name, a, b, c in zip(["loss", "ce", "mse"], out, rl, r32):
        assert a.dtype == torch.float32 and a.dim() == 0
        assert_lowp(name, a, b, c, atol=1e-4)
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], gs, gl, g32):
        assert a.dtype == dtype
        assert_lowp(name, a, b, c, atol=1e-3)


def test_confident_prediction_keeps_target_gradient_bf16() -> None:
    # The precision trap: with p_target = 1 - 6e-4, bf16 rounds p to 1.0, and p - 1 taken after
    # rounding is 0: every token's gradient would vanish. The kernel subtracts in fp32.
    torch.manual_seed(1)
    n, k = 9, 6
    # Labels 0..k-1 own basis directions e_0..e_{k-1}; the other rows live in the remaining ones,
    # so each token's target logit is 12 and all others are near 0.
    weight = 0.3 * torch.randn(V, H)
    weight[:, :k] = 0
    weight[:k] = torch.eye(k, H)
    labels = torch.randint(0, k, (n,))
    hidden = 12.0 * torch.eye(k, H)[labels] + 0.05 * torch.randn(n, H)
    weight, hidden = weight.bfloat16(), hidden.bfloat16()
    img, tgt, mask = torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool)
    (h, w), (h32, w32) = leaves(hidden, weight), leaves(hidden, weight, dtype=torch.float32)
    p = torch.softmax(h32.detach() @ w32.detach().t(), -1).gather(1, labels[:, None])
    print(f"p_target in [{p.min().item():.6f}, {p.max().item():.6f}]")
    assert p.min() > 0.998 and p.max() < 1.0
    _, ce, _ = ce_mse(h, w, labels, img, tgt, mask, LAM, backend="triton")
    _, ce32, _ = ce_mse_ref(h32, w32, labels, img, tgt, mask, LAM)
    gh, gw = torch.autograd.grad(ce, [h, w])
    gh32, gw32 = torch.autograd.grad(ce32, [h32, w32])
    # The trap is real here: rounding p to bf16 before subtracting the one-hot loses the gradient.
    logits = h32.detach() @ w32.detach().t()
    naive = (torch.softmax(logits, -1).bfloat16().float() - torch.eye(V)[labels]) / n
    naive_err = diffs(naive.bfloat16().float() @ w32.detach(), gh32)[0]
    print(f"dhidden with p rounded to bf16 first: max|d|={naive_err:.3e}")
    assert naive_err > 0.5 * gh32.abs().max().item()
    for name, a, b in [("dhidden", gh, gh32), ("dweight", gw, gw32)]:
        mx, mean = diffs(a, b)
        scale = b.abs().max().item()
        print(f"{name}: bf16 max|d|={mx:.3e} mean|d|={mean:.3e}, max|ref|={scale:.3e}")
        assert scale > 1e-5 and a.abs().max().item() > 0.5 * scale  # the gradient survived
        assert mx <= 2e-2 * scale  # bf16 storage of the gradient, nothing worse


@pytest.mark.parametrize("n", [1, 16, 17])
def test_chunk_edges(n: int) -> None:
    data = make(n=n, ignored=0.0)
    (out, gs), (ref, gr) = run(ce_mse, data, **TRITON), run(ce_mse_ref, data)
    for a, b in zip([*out, *gs], [*ref, *gr]):
        assert_close32("value", a, b)


def test_all_tokens_ignored() -> None:
    h, w, lab, img, tgt, mask = make()
    lab[:] = -100
    out, (dh, dw, di) = run(ce_mse, (h, w, lab, img, tgt, mask), **TRITON)
    assert out[1].item() == 0.0
    assert dh.abs().max() == 0 and dw.abs().max() == 0
    assert all(torch.isfinite(t).all() for t in (*out, dh, dw, di))
    ref, (_, _, di_ref) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert_close32("loss", out[0], ref[0])
    assert_close32("dimg", di, di_ref)


@pytest.mark.parametrize("case", ["no_images", "mask_all_false"])
def test_no_image_target(case: str) -> None:
    h, w, lab, img, tgt, mask = make(m=0 if case == "no_images" else M)
    mask[:] = False
    out, (dh, _, di) = run(ce_mse, (h, w, lab, img, tgt, mask), **TRITON)
    ref, (dhr, _, _) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert out[2].item() == 0.0 and di.abs().sum() == 0 and di.shape == img.shape
    assert_close32("loss", out[0], ref[0])
    assert_close32("dhidden", dh, dhr)


def test_num_items_accumulation() -> None:
    # Two micro-batches with num_items = labelled tokens of both: summed grads == one big batch.
    h, w, lab, img, tgt, mask = make(n=2 * N)
    total = int((lab != -100).sum())
    wa, ha = w.clone().requires_grad_(), h.clone().requires_grad_()
    ce_sum = 0.0
    for s in (slice(0, N), slice(N, 2 * N)):
        _, ce, _ = ce_mse(ha[s], wa, lab[s], img, tgt, mask, LAM, num_items=torch.tensor(total), **TRITON)
        ce.backward()
        ce_sum += ce.item()
    hb, wb = leaves(h, w)
    _, ce_big, _ = ce_mse(hb, wb, lab, img, tgt, mask, LAM, **TRITON)
    ce_big.backward()
    print(f"ce two micro-batches {ce_sum:.7f}, one batch {ce_big.item():.7f}")
    assert abs(ce_sum - ce_big.item()) < 1e-5
    assert_close32("dweight", wa.grad, wb.grad)
    assert_close32("dhidden", ha.grad, hb.grad)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False)])
def test_partial_requires_grad(needs: tuple[bool, bool, bool]) -> None:
    h, w, lab, img, tgt, mask = make(n=17)
    xs = [t.clone().requires_grad_(n) for t, n in zip((h, w, img), needs)]
    out = ce_mse(xs[0], xs[1], lab, xs[2], tgt, mask, LAM, **TRITON)
    _, gr = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    (x,), (g,) = [x for x in xs if x.requires_grad], [g for g, n in zip(gr, needs) if n]
    assert_close32("grad", torch.autograd.grad(combo(out), x)[0], g)


def test_never_builds_full_logits(monkeypatch) -> None:
    # Every GEMM output of width V is one chunk (<= 16 rows) of logits, never N x V.
    shapes = []
    real = kern_mod.matmul

    def spy(a, b, out, *args, **kw):
        shapes.append(tuple(out.shape))
        return real(a, b, out, *args, **kw)

    monkeypatch.setattr(kern_mod, "matmul", spy)
    run(ce_mse, make(), **TRITON)
    logits = [s for s in shapes if s[1] == V]
    assert len(logits) == 3 and max(s[0] for s in logits) == 16


def test_opcheck() -> None:
    h, w, lab, img, tgt, mask = make(n=5, m=2)
    h, w, img = leaves(h, w, img)
    args = (h, w, lab, img, tgt, mask, LAM, -100, 9.0, True, True, True, "triton")
    torch.library.opcheck(torch.ops.mage_fast.ce_mse.default, args)


def test_label_out_of_range_raises() -> None:
    # The kernels index memory with the labels: an id >= V is an error, never a silent read.
    args = list(make())
    args[2] = args[2].clone()
    args[2][3] = V
    with pytest.raises(RuntimeError, match="label is out of bounds"):
        ce_mse(*args, LAM, **TRITON)
