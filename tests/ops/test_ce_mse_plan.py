"""ce_mse's traps beside the backends' numerics (test_ce_mse.py): bad inputs and their messages,
the chunk planner's CPU and GPU rules, no N x V logits on torch and triton, the native op's
opcheck, entry checks and schemas (which follow the CeMseArgs record)."""

from __future__ import annotations

import importlib

import pytest
import torch
from cemseutil import LAM, D, H, M, N, V, ce_mod, make, plan_mod, run
from opsutil import NATIVE, device_for, leaves
from tritonutil import requires_triton

from mage_fast.ops import _ext, ce_mse

no_c = pytest.mark.skipif(not _ext.HAS_C, reason=_ext.C_IMPORT_ERROR or "")


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


def test_plan_cpu_rule() -> None:
    assert plan_mod.chunk_rows(10**6, 32000, budget=64 * 2**20) == 262
    assert plan_mod.chunk_rows(3, 32000, budget=64 * 2**20) == 3
    assert plan_mod.chunk_rows(100, 10**9, budget=1) == 1
    p = plan_mod.plan(16384, 4096, 128256, torch.bfloat16, "cpu")
    assert (p.rows, p.order) == (65, "tokens_outer") and p.chunks == -(-16384 // 65)


@pytest.mark.parametrize("v", [32000, 128256])
@pytest.mark.parametrize("dc", ["h100", "h200", "gpu"])
def test_plan_gpu_rule(v: int, dc: str) -> None:
    # GPU: rows a multiple of 128, buffers within the cap, and within 1 % of the least modelled
    # GEMM time of any multiple of 128 that fits the cap (the search covers balanced chunkings
    # only: the fewest chunks and three more); a problem smaller than one chunk is one chunk.
    n, h = 16384, 4096
    p = plan_mod.plan(n, h, v, torch.bfloat16, dc)
    print(dc, v, p)
    cap = min(plan_mod.GPU_BUFFER_CAP, plan_mod.GPU_MEM_GIB[dc] * 2**30 / 16)
    assert p.rows % 128 == 0 and p.chunks == -(-n // p.rows) and p.buffer_bytes <= cap
    best = plan_mod._chunk_seconds(p.rows, n, h, v, dc)
    fit = [r for r in range(128, n + 1, 128) if r * v * 6 <= cap]
    assert best <= 1.01 * min(plan_mod._chunk_seconds(r, n, h, v, dc) for r in fit)
    assert plan_mod.plan(100, h, v, torch.bfloat16, dc).chunks == 1


def test_plan_production_check_walks_two_chunks() -> None:
    # The production-shape checks (make gpu-check, test_production_shapes.py) cross a chunk
    # boundary into a partial chunk on h100 and h200.
    for dc in ("h100", "h200"):
        p = plan_mod.plan(7000, 4096, 128256, torch.bfloat16, dc)
        assert p.chunks == 2 and 7000 % p.rows != 0, p


def test_never_builds_full_logits_torch(monkeypatch) -> None:
    # Every GEMM output of the forward is at most one chunk (4 rows) of logits, never N x V.
    monkeypatch.setattr(plan_mod, "CHUNK_BYTES", 2 * 4 * V * 4)
    shapes = []
    real = ce_mod.mm_f32

    def spy(a, b):
        out = real(a, b)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(ce_mod, "mm_f32", spy)
    run(ce_mse, make(), backend="torch")
    logits = [s for s in shapes if s[1] == V]
    assert len(logits) == 10 and max(s[0] for s in logits) == 4


@requires_triton
def test_triton_fixed_configs_no_full_logits(monkeypatch) -> None:
    # Every GEMM of width V is one chunk (<= 16 rows) of logits, never N x V; the GEMMs run fixed
    # tiles per shape (no timing autotune, so no clone of grad_weight): two runs agree bitwise.
    kern_mod = importlib.import_module("mage_fast.kernels.ce_mse")
    monkeypatch.setattr(plan_mod, "CHUNK_BYTES", 2 * 16 * V * 4)
    monkeypatch.setattr(plan_mod, "device_class", lambda device: "cpu")
    shapes = []
    real = kern_mod.matmul

    def spy(a, b, out, *args, **kw):
        shapes.append(tuple(out.shape))
        return real(a, b, out, *args, **kw)

    monkeypatch.setattr(kern_mod, "matmul", spy)
    data = make()
    (_, g1), (_, g2) = run(ce_mse, data, backend="triton"), run(ce_mse, data, backend="triton")
    logits = [s for s in shapes if s[1] == V]
    assert len(logits) == 6 and max(s[0] for s in logits) == 16
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))  # deterministic


@no_c
@pytest.mark.parametrize("native", NATIVE)
@pytest.mark.parametrize("flags", [(True, True, True), (False, False, False), (True, False, True)])
def test_opcheck_native_op(flags, native: str) -> None:
    with device_for(native):
        h, w, lab, img, tgt, mask = make(n=9, v=13, m=3)
        h, w, img = leaves(h, w, img)
        args = (h, w, lab, img, tgt, mask, -100, None, *flags, 4)
        torch.library.opcheck(torch.ops.mage_fast.ce_mse_fwd.default, args)
        torch.library.opcheck(torch.ops.mage_fast.ce_mse_fwd.default, (*args[:7], 50.0, *args[8:]))


@no_c
def test_native_entry_checks() -> None:
    h, w, lab, img, tgt, mask = make(n=6, v=11, m=2)
    lab[2] = 11
    fwd = torch.ops.mage_fast.ce_mse_fwd
    with pytest.raises(RuntimeError, match=r"label 11 at position 2 is out of bounds"):
        fwd(h, w, lab, img, tgt, mask, -100, None, False, False, False, 4)
    lab[2] = 0
    with pytest.raises(RuntimeError, match="chunk_rows must be >= 1"):
        fwd(h, w, lab, img, tgt, mask, -100, None, False, False, False, 0)
    with pytest.raises(RuntimeError, match=r"weight must be \(V, 24\)"):
        fwd(h, w[:, :5], lab, img, tgt, mask, -100, None, False, False, False, 4)
    with pytest.raises(RuntimeError, match=r"img_mask must be \(M,\) bool"):
        fwd(h, w, lab, img, tgt, mask.int(), -100, None, False, False, False, 4)
    with pytest.raises(RuntimeError, match="share one dtype"):
        fwd(h.double(), w.double(), lab, img, tgt, mask, -100, None, False, False, False, 4)
    with pytest.raises(ValueError, match="backend 'cpp' is unavailable on device meta"):
        ce_mse(*[t.to("meta") for t in (h, w, lab, img, tgt, mask)], LAM, backend="cpp")


@no_c
def test_schemas_follow_the_record() -> None:
    # Backends receive one CeMseArgs; both flat schemas take its fields, in its order, first.
    fields = list(ce_mod.CeMseArgs._fields)
    op = [a.name for a in torch.ops.mage_fast.ce_mse.default._schema.arguments]
    native = [a.name for a in torch.ops.mage_fast.ce_mse_fwd.default._schema.arguments]
    assert op == [*fields, "backend"] and native == [*fields, "chunk_rows"]
