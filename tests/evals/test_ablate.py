"""The ablation's table from run results: mean ± std over seeds, visual tokens per aligner."""

from __future__ import annotations

import os

import pytest
from testutil import ROOT

from mage_fast.apps import ablate


def _run(aligner: str, lam: float, seed: int, acc: float, step_s: float, mb: float) -> dict:
    return {"aligner": aligner, "lambda": lam, "seed": seed, "accuracy": dict.fromkeys(ablate.QTYPES, acc),
            "step_s": step_s, "peak_rss_mb": mb}  # fmt: skip


def test_aggregate_and_table() -> None:
    runs = [
        _run("ian", 1.0, 0, 0.5, 0.2, 300),
        _run("ian", 1.0, 1, 0.7, 0.4, 310),
        _run("linear", 1.0, 0, 0.25, 0.1, 200),
    ]
    rows = ablate.aggregate(runs)
    assert [r["variant"] for r in rows] == ["ian λ=1", "linear λ=1"]
    mean, std = rows[0]["accuracy"]["overall"]
    assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414213, rel=1e-5)
    assert (rows[0]["step_ms"], rows[0]["peak_mb"], rows[1]["accuracy"]["count"]) == (
        pytest.approx(300.0),
        310,
        (0.25, 0.0),
    )
    # the 48-px, 8-px-patch tower: a 6×6 grid; ian/pool_mlp pool 2×2 → 9 tokens, the others keep 36
    assert [ablate.tokens_per_image(a) for a in ("ian", "pool_mlp", "mlp2x_gelu", "linear")] == [9, 9, 36, 36]
    text = ablate.table(rows)
    assert "| ian λ=1 | 2 | 0.600 ± 0.141 |" in text and "| 9 | 300 | 310 |" in text


def test_default_configs_are_the_repositorys() -> None:
    """The launchers' default training configs resolve to the repository's configs/ (they are
    found from the module's own path)."""
    from mage_fast.apps import demo_multi

    for config in (ablate.CONFIG, demo_multi.CONFIG):
        assert os.path.isfile(config), config
        assert os.path.relpath(config, ROOT).startswith(os.path.join("configs", "train")), config
