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
