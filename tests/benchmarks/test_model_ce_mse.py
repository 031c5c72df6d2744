"""The traffic/FLOP model of ce_mse (benchmarks/model/ce_mse.py) pins the GPU design's bounds at
N = 16384, H = 4096, bf16: fwd+bwd within 1.3x of the FLOP roofline at V = 128256 and 32000 on
h100, grad_weight traffic at most 20 x V*H*4 bytes; and it reads the op's real planner: the old
64 MiB chunk rule breaks the bounds."""

from __future__ import annotations

import pytest

from benchmarks.model import ce_mse as model
from benchmarks.model.__main__ import main
from benchmarks.model.roofline import DEVICES

H100 = DEVICES["h100"]


def check_bounds(dev) -> None:
    for v in model.VOCABS:
        roof = model.roofline_ms(dev, v)
        for impl in ("triton", "cuda"):
            t = model.predicted_ms(impl, dev, v)
            gw = model.grad_weight_bytes(impl, dev, v) / (v * model.H * 4)
            print(
                f"{dev.name} V={v} {impl}: {t:.1f} ms vs roofline {roof:.1f} ms ({t / roof:.2f}x), grad_weight {gw:.1f}x"
            )
            assert t <= 1.3 * roof, f"{impl} V={v}: {t:.1f} ms > 1.3 x {roof:.1f} ms"
            assert gw <= 20, f"{impl} V={v}: grad_weight traffic {gw:.1f} x V*H*4"


def test_bounds_h100() -> None:
    check_bounds(H100)


def test_old_64mib_rule_breaks_the_bounds(monkeypatch) -> None:
    # The model reads the planner at call time: swapping in the CPU rule (64 MiB of chunk
    # buffers: 65 rows at V = 128256) must fail the same check.
    real = model.ce_mod.plan
    monkeypatch.setattr(model.ce_mod, "plan", lambda n, h, v, dtype, dc: real(n, h, v, dtype, "cpu"))
    assert model.chunk_sizes("triton", H100, 128256)[0] == 65
    with pytest.raises(AssertionError):
        check_bounds(H100)


def test_rows_and_table(capsys) -> None:
    rows = model.rows(H100)
    impls = {r.impl for r in rows}
    assert impls == set(model.IMPLS)
    assert all(r.op == "ce_mse" and r.phase.startswith("step:") and r.bytes > 0 for r in rows)
    # Every GEMM FLOP is counted once per implementation: 6 N H V in all.
    for v in model.VOCABS:
        tc = sum(r.tc_flops for r in rows if r.impl == "triton" and f"V={v}" in r.shape)
        assert tc == 6 * model.N * model.H * v
    main([])
    out = capsys.readouterr().out
    assert "sum of steps" in out and "ce_mse" in out and "h200" in out
