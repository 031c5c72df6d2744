"""Packing plan and packed batches: FFD rows, balance, determinism, per-sample positions and labels."""

from __future__ import annotations

import random

import pytest
import torch

from mage_fast.data import IGNORE_INDEX, Collator
from mage_fast.data.packing import first_fit_decreasing, plan_rows

S, PAD = 4, 0


def sample(sid: str, n_tok: int, n_img: int = 0) -> dict:
    return {
        "id": sid,
        "input_ids": torch.arange(1, n_tok + 1),
        "labels": torch.arange(1, n_tok + 1),
        "pixel_values": torch.full((n_img, 3, S, S), float(n_tok)),
        "caption_ids": [torch.tensor([n_tok, k]) for k in range(n_img)],
    }


def test_ffd_places_longest_first_in_first_row_with_room():
    assert first_fit_decreasing([5, 3, 8, 2, 4], 10) == [[2, 3], [0, 4], [1]]


@pytest.mark.parametrize("seed", range(5))
def test_plan_covers_every_sample_once_within_capacity(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 40))]
    rows = plan_rows(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    assert len(rows) <= len(first_fit_decreasing(lengths, 128))
    assert plan_rows(lengths, 128) == rows  # a pure function of the lengths


def test_plan_balances_rows():
    """FFD at capacity 100 fills one row and leaves 20 in the other; balanced: 60 and 60."""
    lengths = [40, 40, 20, 20]
    assert [sum(lengths[i] for i in r) for r in first_fit_decreasing(lengths, 100)] == [100, 20]
    assert sorted(sum(lengths[i] for i in r) for r in plan_rows(lengths, 100)) == [60, 60]


def test_packed_batch_layout():
    samples = [sample("a", 5, 1), sample("b", 3, 0), sample("c", 4, 2), sample("d", 2, 1)]
    b = Collator(PAD, S, pack_length=9)(samples)
    # FFD at 9: a + c | b + d (9, 5); balanced (capacity 7): a + d | c + b (7, 7)
    assert b["ids"] == ["a", "d", "c", "b"] and b["sample_rows"].tolist() == [0, 0, 1, 1]
    assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (2, 7)
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert b["input_ids"][1].tolist() == [1, 2, 3, 4, 1, 2, 3]
    ign = IGNORE_INDEX
    assert b["labels"][0].tolist() == [ign, 2, 3, 4, 5, ign, 2]  # no sample's first token is a target
    assert b["labels"][1].tolist() == [ign, 2, 3, 4, ign, 2, 3]
    assert b["image_counts"].tolist() == [1, 1, 2, 0]
    assert b["pixel_values"][:, 0, 0, 0].tolist() == [5.0, 2.0, 4.0, 4.0]  # a's, d's, then c's two
    assert b["caption_ids"].tolist() == [[5, 0], [2, 0], [4, 0], [4, 1]]
    assert int(b["attention_mask"].sum()) == b["attention_mask"].numel()  # no padding


def test_padding_tail_positions_restart():
    b = Collator(PAD, S, pack_length=8)([sample("a", 6), sample("b", 3)])
    assert b["sample_rows"].tolist() == [0, 1]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]]
    assert b["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert b["labels"][1].tolist() == [IGNORE_INDEX, 2, 3] + [IGNORE_INDEX] * 3


def test_packed_order_follows_rows():
    """Samples, images and ids come row by row in the plan's order (longest first)."""
    b = Collator(PAD, S, pack_length=6)([sample("s", 2, 1), sample("l", 6, 1), sample("m", 4, 1)])
    assert b["ids"] == ["l", "m", "s"] and b["sample_rows"].tolist() == [0, 1, 1]
    assert b["pixel_values"][:, 0, 0, 0].tolist() == [6.0, 4.0, 2.0]


def test_packed_batch_keeps_the_tokens_and_labels_of_each_sample():
    rng = random.Random(0)
    samples = [sample(f"s{k}", rng.randint(1, 30)) for k in range(12)]
    b = Collator(PAD, S, pack_length=40)(samples)
    unpacked = Collator(PAD, S)(samples)
    assert int(b["attention_mask"].sum()) == int(unpacked["attention_mask"].sum())
    # every labelled target of the unpacked batch, none more: a row's first label is never a target
    assert int((b["labels"] != IGNORE_INDEX).sum()) == int((unpacked["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert sorted(b["ids"]) == sorted(s["id"] for s in samples)


def test_over_length_sample_is_an_error():
    with pytest.raises(ValueError, match=r"sample 'x': 9 tokens exceed the packed row length 8"):
        Collator(PAD, S, pack_length=8)([sample("x", 9)])
    with pytest.raises(ValueError, match="pack_length"):
        Collator(PAD, S, pack_length=0)
