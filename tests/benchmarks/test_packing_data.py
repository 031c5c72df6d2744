"""The benchmark's synthetic LLaVA-like mix: the documented shares, lengths within max_length, labels."""

from __future__ import annotations

import random

import pytest

from benchmarks.packing_data import SOURCES, row_spec, synthetic_rows
from mage_fast.labels import IGNORE_INDEX


def test_shares_follow_the_table():
    assert sum(s.share for s in SOURCES) == pytest.approx(1.0)
    rng = random.Random(0)
    names = [row_spec(rng)[0] for _ in range(4000)]
    for s in SOURCES:
        assert names.count(s.name) / len(names) == pytest.approx(s.share, abs=0.02), s.name


def test_rows_fit_and_label_only_answers():
    rows, dropped = synthetic_rows(200, image_tokens=144, max_length=2048, vocab=512, seed=1)
    assert len(rows) == 200 and dropped > 0  # long ShareGPT rows are skipped, as the dataset does
    assert all(len(r["input_ids"]) <= 2048 for r in rows)
    for r in rows[:20]:
        img = r["input_ids"] == 511
        assert int(img.sum()) == 144 * r["images"] and bool((r["labels"][img] == IGNORE_INDEX).all())
        assert 0 < int((r["labels"] != IGNORE_INDEX).sum()) < len(r["labels"])
    again, _ = synthetic_rows(200, image_tokens=144, max_length=2048, vocab=512, seed=1)
    assert all(bool((a["input_ids"] == b["input_ids"]).all()) for a, b in zip(rows, again))
