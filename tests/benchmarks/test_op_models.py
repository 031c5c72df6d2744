"""The traffic/FLOP models of ian_projection and patch_pool read the kernels' real launch choices
and pin the bounds the design promises on an H100."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

from benchmarks.model import ian_projection, patch_pool  # noqa: E402
from benchmarks.model.roofline import DEVICES  # noqa: E402


def test_dw2_gelu_below_tensor_cores_on_h100() -> None:
    dev = DEVICES["h100"]
    built, prologue = ian_projection.dw2_rows()
    t = built.times_ms(dev)
    assert t["cuda"] < t["tc"] and t["sfu"] < t["tc"], t
    assert built.predicted_ms(dev) == t["tc"]
    # The prologue variant re-evaluates GELU once per M tile of the real GEMM tile: CUDA-core bound.
    assert ian_projection.m_tiles(ian_projection.D, ian_projection.D, ian_projection.N) == 32
    tp = prologue.times_ms(dev)
    assert max(tp, key=tp.get) != "tc", tp


def test_patch_pool_is_a_memory_stream_with_every_lane_used() -> None:
    use, note = patch_pool.lane_use()
    assert use == 1.0, note  # Wo = 12 tiles by 4, C = 1024 by a power of two
    for row in patch_pool.rows(DEVICES["h100"]):
        t = row.times_ms(DEVICES["h100"])
        assert max(t, key=t.get) == "mem", t


def test_gpu_winners_pick_the_fastest_clean_validated_backend() -> None:
    from benchmarks.gpu_winners import winners

    row = lambda op, p, ms, status="ok", mode="full": {
        "op": op,
        "provider": p,
        "ms_median": ms,
        "status": status,
        "mode": mode,
    }
    rows = [
        row("patch_pool", "op_torch", 2.0),
        row("patch_pool", "triton", 1.0),
        row("patch_pool", "cuda", 0.5),
        row("patch_pool", "cuda", 0, status="error"),
        row("patch_pool", "liger", 0.1),
        row("ce_mse", "op_torch", 3.0),
        row("ce_mse", "triton", 1.0, mode="forward"),
        row("ian_projection", "op_torch", 3.0),
        row("ian_projection", "triton", 1.0),
        row("ian_projection", "cuda", 2.0),
    ]
    checked = {(op, b): True for op in ("patch_pool", "ce_mse") for b in ("torch", "triton", "cuda")}
    checked |= {("ian_projection", "torch"): True, ("ian_projection", "triton"): False}
    got = winners(rows, checked)
    assert got["patch_pool"][0] == "triton"  # cuda errored once: not a candidate; liger is not ours
    assert got["ce_mse"][0] == "torch"  # only full-mode rows count
    # triton is fastest but failed its float64 check; cuda never ran the check: neither is a candidate
    assert got["ian_projection"][0] == "torch" and set(got["ian_projection"][1]) == {"torch"}
