"""ce_mse on every backend (torch, triton, cpp, cuda; the backend is a fixture) vs the full-logits
F.cross_entropy + MSE reference: fp32 tight, bf16/fp16 by the 2x rule (mage_fast/ops/reference.py), fp16 under
a 2^16 loss scale, forward and backward, odd shapes and chunk edges, ignore_index / all ignored /
NaN in padding rows / num_items, the fp32 target-class gradient, retain_graph, opcheck. Bad inputs,
the chunk planner and the native entry points: test_ce_mse_plan.py."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from cemseutil import LAM, H, M, N, V, combo, make, plan_mod, run
from opsutil import (
    ALL_BACKENDS,
    assert_close32,
    assert_lowp,
    backend_device,
    device_for,
    diffs,
    leaves,
)

from mage_fast.ops import _ext, ce_mse
from mage_fast.ops.reference import ce_mse_ref

# Tokens per chunk in these tests: N = 37 walks 10 chunks of 4 (3 of 16 for the slower
# interpreter), the last one partial. Budget of the CPU rule: 2 * rows * V * 4 bytes.
ROWS = {"triton": 16}
no_c = pytest.mark.skipif(not _ext.HAS_C, reason=_ext.C_IMPORT_ERROR or "")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request, monkeypatch) -> Iterator[str]:
    """The backend under test, with the planner's CPU rule forced to small chunks on every device;
    tensors are created on the GPU for "cuda" (and for "triton" on a CUDA machine)."""
    name = request.param
    rows = ROWS.get(name, 4)
    monkeypatch.setattr(plan_mod, "CHUNK_BYTES", 2 * rows * V * 4)
    monkeypatch.setattr(plan_mod, "device_class", lambda device: "cpu")
    assert plan_mod.plan(N, H, V, torch.float32, "cpu").rows == rows
    with device_for(name):
        yield name


def check_all32(out, gs, ref, gr) -> None:
    for name, a, b in zip(["loss", "ce", "mse", "dhidden", "dweight", "dimg"], [*out, *gs], [*ref, *gr]):
        assert_close32(name, a, b)


@pytest.mark.parametrize("n,v,m", [(37, 101, 5), (1, 7, 0), (5, 3, 1), (64, 257, 3)])
def test_fp32_forward_backward(backend: str, n: int, v: int, m: int) -> None:
    data = make(n=n, v=v, m=m)
    (out, gs), (ref, gr) = run(ce_mse, data, backend=backend), run(ce_mse_ref, data)
    assert all(a.dtype == torch.float32 and a.dim() == 0 for a in out)
    check_all32(out, gs, ref, gr)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend: str, dtype: torch.dtype) -> None:
    data = make(dtype)
    (out, gs), (rl, gl) = run(ce_mse, data, backend=backend), run(ce_mse_ref, data)
    r32, g32 = run(ce_mse_ref, data, dtype=torch.float32)
    for name, a, b, c in zip(["loss", "ce", "mse"], out, rl, r32):
        assert a.dtype == torch.float32 and a.dim() == 0  # fp32 scalars whatever the input dtype
        assert_lowp(name, a, b, c, atol=1e-4)
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], gs, gl, g32):
        assert a.dtype == dtype
        assert_lowp(name, a, b, c, atol=1e-3)


def _scaled_grads(fn, data, dtype, scale: float, num_items: int, **kw):
    h, w, lab, img, tgt, mask = data
    h, w, img = leaves(h, w, img, dtype=dtype)
    loss = fn(h, w, lab, img, tgt.to(dtype), mask, LAM, num_items=num_items, **kw)[0]
    return [g.float() / scale for g in torch.autograd.grad(loss * scale, [h, w, img])]


def test_fp16_loss_scale(backend: str) -> None:
    # fp16 training: loss scale 2^16, num_items = 16384 (an accumulated batch). A gradient scaled
    # by 1/16384 before its rounding to fp16 would underflow (softmax tails ~1e-4 -> 6e-9 < fp16's
    # smallest subnormal); the op applies the scales in fp32. The naive path: fp32 CE on fp16
    # logits, scaled loss backward.
    scale, items = 2.0**16, 16384
    data = make(torch.float16, n=64, v=257, ignored=0.2)
    exact = _scaled_grads(ce_mse_ref, data, torch.float32, 1.0, items)

    def naive(h, w, lab, img, tgt, mask, lam, num_items):
        ce = F.cross_entropy((h @ w.t()).float(), lab, ignore_index=-100, reduction="sum") / num_items
        sel = (img.float() - tgt.float())[mask]
        return (ce + lam * (sel * sel).mean(),)

    base = _scaled_grads(naive, data, torch.float16, scale, items)
    got = _scaled_grads(ce_mse, data, torch.float16, scale, items, backend=backend)
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], got, base, exact):
        err, ref_err = diffs(a, c)[0], diffs(b, c)[0]
        print(f"{name}: op max|d|={err:.3e}, naive fp16 max|d|={ref_err:.3e}, max|g|={c.abs().max().item():.3e}")
        assert torch.isfinite(a).all() and err <= 2 * ref_err + 1e-3 * c.abs().max().item() * 2**-10


def test_nan_in_ignored_row(backend: str) -> None:
    # A padding row's hidden state may hold NaN/Inf: it is ignored, so it must not reach any
    # gradient (a select, not a product by 0).
    h, w, lab, img, tgt, mask = make(ignored=0.0)
    lab[[3, 20]] = -100
    h[3] = float("nan")
    h[20, 2] = float("inf")
    (out, gs) = run(ce_mse, (h, w, lab, img, tgt, mask), backend=backend)
    keep = torch.ones(N, dtype=torch.bool)
    keep[[3, 20]] = False
    hc = h.clone()
    hc[~keep] = 0.0
    (ref, gr) = run(ce_mse_ref, (hc, w, lab, img, tgt, mask))
    check_all32(out, gs, ref, gr)


@pytest.mark.parametrize("edge", ["one", "full_chunk", "one_more"])
def test_chunk_edges(backend: str, edge: str) -> None:
    rows = ROWS.get(backend, 4)
    data = make(n={"one": 1, "full_chunk": rows, "one_more": rows + 1}[edge], ignored=0.0)
    (out, gs), (ref, gr) = run(ce_mse, data, backend=backend), run(ce_mse_ref, data)
    check_all32(out, gs, ref, gr)


def test_all_tokens_ignored(backend: str) -> None:
    h, w, lab, img, tgt, mask = make()
    lab[:] = -100
    out, (dh, dw, di) = run(ce_mse, (h, w, lab, img, tgt, mask), backend=backend)
    assert out[1].item() == 0.0
    assert dh.abs().max() == 0 and dw.abs().max() == 0
    assert all(torch.isfinite(t).all() for t in (*out, dh, dw, di))
    ref, (_, _, di_ref) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert_close32("loss", out[0], ref[0])
    assert_close32("dimg", di, di_ref)
    out, gs = run(ce_mse, (h, w, lab, img, tgt, torch.zeros_like(mask)), backend=backend)
    assert all(torch.isfinite(t).all() and (t == 0).all() for t in (*out, *gs))


@pytest.mark.parametrize("case", ["no_images", "mask_all_false"])
def test_no_image_target(backend: str, case: str) -> None:
    h, w, lab, img, tgt, mask = make(m=0 if case == "no_images" else M)
    mask[:] = False
    out, (dh, _, di) = run(ce_mse, (h, w, lab, img, tgt, mask), backend=backend)
    ref, (dhr, _, _) = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    assert out[2].item() == 0.0 and di.abs().sum() == 0 and di.shape == img.shape
    assert_close32("loss", out[0], ref[0])
    assert_close32("dhidden", dh, dhr)


def test_num_items_accumulation(backend: str) -> None:
    # Two micro-batches with num_items = labelled tokens of both: summed grads == one big batch.
    h, w, lab, img, tgt, mask = make(n=2 * N)
    total = int((lab != -100).sum())
    wa, ha = w.clone().requires_grad_(), h.clone().requires_grad_()
    ce_sum = 0.0
    for s in (slice(0, N), slice(N, 2 * N)):
        _, ce, _ = ce_mse(ha[s], wa, lab[s], img, tgt, mask, LAM, num_items=torch.tensor(total), backend=backend)
        ce.backward()
        ce_sum += ce.item()
    hb, wb = leaves(h, w)
    _, ce_big, _ = ce_mse(hb, wb, lab, img, tgt, mask, LAM, backend=backend)
    ce_big.backward()
    assert abs(ce_sum - ce_big.item()) < 1e-5
    assert_close32("dweight", wa.grad, wb.grad)
    assert_close32("dhidden", ha.grad, hb.grad)


def test_num_items_and_int32_labels(backend: str) -> None:
    h, w, lab, img, tgt, mask = make()
    (out, gs) = run(ce_mse, (h, w, lab.int(), img, tgt, mask), backend=backend, num_items=100)
    (ref, gr) = run(ce_mse_ref, (h, w, lab, img, tgt, mask), num_items=100)
    check_all32(out, gs, ref, gr)


def test_custom_ignore_index(backend: str) -> None:
    h, w, lab, img, tgt, mask = make()
    lab[lab == -100] = 5
    lab[::3] = 5
    (out, gs) = run(ce_mse, (h, w, lab, img, tgt, mask), backend=backend, ignore_index=5)
    (ref, gr) = run(ce_mse_ref, (h, w, lab, img, tgt, mask), ignore_index=5)
    check_all32(out, gs, ref, gr)


def test_confident_prediction_target_gradient_fp32(backend: str) -> None:
    # p_target ~ 1 - 1.5e-6: (p - 1) must come out as ~ -1.5e-6 to 1e-3 relative, not 0 or an
    # fp32 ulp of 1 (the target class as minus the sum of the other classes' probabilities).
    w = torch.zeros(4, 2)
    w[0, 0] = 1.0
    h = torch.tensor([[14.5, 0.0]], requires_grad=True)
    lab = torch.tensor([0])
    img, tgt, mask = torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.bool)
    loss = ce_mse(h, w, lab, img, tgt, mask, 0.0, backend=backend)[0]
    (g,) = torch.autograd.grad(loss, [h])
    p_other = torch.exp(torch.tensor(-14.5, dtype=torch.float64))
    exact = -(3 * p_other / (1 + 3 * p_other)).item()  # d loss / d h[0,0] = p_0 - 1
    print(f"target grad {g[0, 0].item():.6e} exact {exact:.6e}")
    assert abs(g[0, 0].item() - exact) <= 1e-3 * abs(exact)


def test_confident_prediction_keeps_target_gradient_bf16(backend: str) -> None:
    # The precision trap: with p_target = 1 - 6e-4, bf16 rounds p to 1.0, and p - 1 taken after
    # rounding is 0: every token's gradient would vanish. The kernels subtract in fp32.
    torch.manual_seed(1)
    n, k = 9, 6
    # Labels 0..k-1 own basis directions e_0..e_{k-1}; the other rows live in the remaining ones,
    # so each token's target logit is 12 and all others are near 0.
    weight = 0.3 * torch.randn(V, H)
    weight[:, :k] = 0
    weight[:k] = torch.eye(k, H)
    labels = torch.randint(0, k, (n,))
    hidden = 12.0 * torch.eye(k, H)[labels] + 0.05 * torch.randn(n, H)
    img, tgt, mask = torch.zeros(1, 4), torch.zeros(1, 4), torch.zeros(1, dtype=torch.bool)
    weight, hidden = weight.bfloat16(), hidden.bfloat16()
    (h, w), (h32, w32) = leaves(hidden, weight), leaves(hidden, weight, dtype=torch.float32)
    p = torch.softmax(h32.detach() @ w32.detach().t(), -1).gather(1, labels[:, None])
    assert p.min() > 0.998 and p.max() < 1.0
    _, ce, _ = ce_mse(h, w, labels, img, tgt, mask, LAM, backend=backend)
    _, ce32, _ = ce_mse_ref(h32, w32, labels, img, tgt, mask, LAM)
    gh, gw = torch.autograd.grad(ce, [h, w])
    gh32, gw32 = torch.autograd.grad(ce32, [h32, w32])
    # The trap is real here: rounding p to bf16 before subtracting the one-hot loses the gradient.
    logits = h32.detach() @ w32.detach().t()
    naive = (torch.softmax(logits, -1).bfloat16().float() - torch.eye(V)[labels]) / n
    assert diffs(naive.bfloat16().float() @ w32.detach(), gh32)[0] > 0.5 * gh32.abs().max().item()
    for name, a, b in [("dhidden", gh, gh32), ("dweight", gw, gw32)]:
        mx, mean = diffs(a, b)
        scale = b.abs().max().item()
        print(f"{name}: bf16 max|d|={mx:.3e} mean|d|={mean:.3e}, max|ref|={scale:.3e}")
        assert scale > 1e-5 and a.abs().max().item() > 0.5 * scale  # the gradient survived
        assert mx <= 2e-2 * scale  # bf16 storage of the gradient, nothing worse


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_partial_requires_grad(backend: str, needs: tuple[bool, bool, bool]) -> None:
    h, w, lab, img, tgt, mask = make(n=17)
    xs = [t.clone().requires_grad_(n) for t, n in zip((h, w, img), needs)]
    out = ce_mse(xs[0], xs[1], lab, xs[2], tgt, mask, LAM, backend=backend)
    _, gr = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    (x,), (g,) = [x for x in xs if x.requires_grad], [g for g, n in zip(gr, needs) if n]
    assert_close32("grad", torch.autograd.grad(combo(out), x)[0], g)


def test_no_grad(backend: str) -> None:
    data = make()
    with torch.no_grad():
        out = ce_mse(*leaves(*data[:2]), data[2], *leaves(data[3]), *data[4:], LAM, backend=backend)
    assert not any(t.requires_grad for t in out)
    for a, b in zip(out, ce_mse_ref(*data, LAM)):
        assert_close32("value", a, b)


def test_retain_graph_and_in_place_backward(backend: str) -> None:
    # Twice through one graph (retain_graph) gives the same gradients; a freed graph hands the
    # stored grad_weight buffer itself to .grad (no second (V, H) buffer).
    h, w, lab, img, tgt, mask = make()
    hl, wl, il = leaves(h, w, img)
    out = ce_mse(hl, wl, lab, il, tgt, mask, LAM, backend=backend)
    first = torch.autograd.grad(combo(out), [hl, wl, il], retain_graph=True)
    second = torch.autograd.grad(combo(out), [hl, wl, il], retain_graph=True)
    _, gr = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    for name, a, b, c in zip(["dhidden", "dweight", "dimg"], first, second, gr):
        assert torch.equal(a, b), name
        assert_close32(name, a, c)
    ptrs = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptrs.append(t.untyped_storage().data_ptr())  # the address only: no extra reference
        return t

    hl, wl, il = leaves(h, w, img)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ce_mse(hl, wl, lab, il, tgt, mask, LAM, backend=backend)
    combo(out).backward()
    assert_close32("dweight .grad", wl.grad, gr[1])
    assert wl.grad.untyped_storage().data_ptr() in ptrs and hl.grad.untyped_storage().data_ptr() in ptrs
    # A caller of the raw op that holds its outputs never sees them scaled in place.
    raw = torch.ops.mage_fast.ce_mse(hl, wl, lab, il, tgt, mask, -100, None, True, True, True, backend)
    kept = raw[3].clone()
    raw[0].backward()
    assert torch.equal(raw[3], kept)


def test_backward_materialises_no_zero_gradients(backend: str) -> None:
    # Nobody differentiates the stored gradients (outputs 3-6): autograd must not build a zero
    # gradient for each of them, which for grad_weight is a V x H buffer written every backward.
    h, w, lab, img, tgt, mask = make()
    hl, wl, il = leaves(h, w, img)
    out = ce_mse(hl, wl, lab, il, tgt, mask, LAM, backend=backend)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if h.is_cuda else [])
    with torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        combo(out).backward()
    zeros = [e for e in prof.events() if e.name in ("aten::zeros", "aten::zeros_like")]
    biggest = max((max(e.cpu_memory_usage, e.device_memory_usage) for e in zeros), default=0)
    assert biggest < wl.numel() * 4, f"the backward allocated a zero gradient of {biggest} bytes"


def _weight_gemms(fn, monkeypatch) -> int:
    """How many grad_weight GEMMs `fn` ran: the in-place `addmm` into the fp32 accumulator of the
    torch and native backends (their other GEMMs are plain `mm`), and calls of the Triton
    backend's grad_weight GEMM."""
    triton_calls = []
    if importlib.util.find_spec("triton") is not None:
        kmod = importlib.import_module("mage_fast.kernels.ce_mse")
        real = kmod._grad_weight_chunk
        monkeypatch.setattr(kmod, "_grad_weight_chunk", lambda *a, **k: (triton_calls.append(1), real(*a, **k))[1])
    acts = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
    return sum(e.name in ("aten::addmm", "aten::addmm_") for e in prof.events()) + len(triton_calls)


def test_frozen_weight_skips_the_weight_gradient(backend: str, monkeypatch) -> None:
    # A frozen lm_head (LoRA): the op gets need_weight_grad=False, so no grad_weight GEMM runs and
    # no grad_weight buffer comes out, while hidden's and img's gradients are those of the
    # trainable case. The trainable run is the control (its GEMM count is one per chunk).
    h, w, lab, img, tgt, mask = make()
    _, gr = run(ce_mse_ref, (h, w, lab, img, tgt, mask))
    hl, il = leaves(h, img)

    def step(weight: torch.Tensor) -> None:
        combo(ce_mse(hl, weight, lab, il, tgt, mask, LAM, backend=backend)).backward()

    frozen = _weight_gemms(lambda: step(w), monkeypatch)
    assert w.grad is None
    assert_close32("dhidden", hl.grad, gr[0])
    assert_close32("dimg", il.grad, gr[2])
    trainable = _weight_gemms(lambda: step(w.clone().requires_grad_()), monkeypatch)
    print(f"grad_weight GEMMs: frozen weight {frozen}, trainable {trainable}")
    assert frozen == 0 < trainable
    raw = torch.ops.mage_fast.ce_mse(hl, w, lab, il, tgt, mask, -100, None, True, False, True, backend)
    assert raw[3].numel() == 0  # no stored grad_weight


@pytest.mark.parametrize("num_items", [None, 50.0])
def test_opcheck(backend: str, num_items) -> None:
    h, w, lab, img, tgt, mask = make(n=9, m=3)
    h, w, img = leaves(h, w, img)
    args = (h, w, lab, img, tgt, mask, -100, num_items, True, True, True, backend)
    torch.library.opcheck(torch.ops.mage_fast.ce_mse.default, args)


def test_label_out_of_range_raises(backend: str) -> None:
    # No silent wrong answer: an id >= V (or a negative id other than ignore_index) is an error.
    # On CUDA tensors the check is a device-side assert (torch._assert_async, the CUDA row kernel):
    # it raises nothing catchable and ends the process's CUDA context, so every later CUDA test
    # would fail. Every backend whose tensors live on the GPU is skipped there, not only "cuda".
    if backend_device(backend).type == "cuda":
        pytest.skip(f"{backend} on CUDA: a device-side assert would end the CUDA context of the test run")
    args = list(make())
    args[2] = args[2].clone()
    args[2][3] = V
    with pytest.raises(RuntimeError, match="out of bounds"):
        ce_mse(*args, LAM, backend=backend)
