"""The resumable data order with length grouping: single-modality micro-batches of similar length,
the same batches after a resume, and the rest of the epoch kept across a 2 -> 1 resize."""

from __future__ import annotations

import itertools
import random

import pytest

from mage_fast.train.checkpoint import ResumeError
from mage_fast.train.sampler import ResumableBatches

N, MICRO = 203, 4


def _groups(seed: int = 0) -> tuple[list[int], list[bool]]:
    rng = random.Random(seed)
    has_image = [rng.random() < 0.7 for _ in range(N)]
    lengths = [rng.randint(40, 600) + (144 if im else 0) for im in has_image]
    return lengths, has_image


def _take(b: ResumableBatches, consumed: int, k: int) -> list[list[int]]:
    return list(itertools.islice(b.iter_from(consumed), k))


def test_grouped_batches_are_one_modality_and_similar_length():
    lengths, has_image = _groups()
    world = 2
    ranks = [ResumableBatches(N, MICRO, r, world, seed=3, groups=(lengths, has_image)) for r in range(world)]
    bpe = ranks[0].batches_per_epoch
    epoch = [b for r in ranks for b in _take(r, 0, bpe)]
    flat = [i for b in epoch for i in b]
    assert all(len(b) == MICRO for b in epoch) and len(flat) == len(set(flat)) == bpe * world * MICRO
    mixed = [b for b in epoch if len({has_image[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only the two modalities' short tails share a micro-batch
    plain = [ResumableBatches(N, MICRO, r, world, seed=3) for r in range(world)]
    padded = [b for r in plain for b in _take(r, 0, bpe)]

    def pad(batches: list[list[int]]) -> int:
        return sum(MICRO * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    assert pad(epoch) < 0.5 * pad(padded)


def test_grouped_order_resumes_exactly_and_differs_per_epoch():
    groups = _groups()
    b = ResumableBatches(N, MICRO, 1, 2, seed=5, groups=groups)
    full = _take(b, 0, 60)  # past one epoch (25 batches)
    again = ResumableBatches(N, MICRO, 1, 2, seed=5, groups=groups)
    assert _take(again, again.check_state(b.state(17)), 43) == full[17:]
    assert full[:10] != full[25:35]


def test_grouped_resize_keeps_the_rest_of_the_epoch():
    """Two ranks stop after 6 micro-batches each; one rank resumes with the same micro-batches
    the pair would have taken next, in round order."""
    groups = _groups()
    two = [ResumableBatches(N, MICRO, r, 2, seed=7, groups=groups) for r in range(2)]
    nxt = [_take(r, 6, 4) for r in two]
    one = ResumableBatches(N, MICRO, 0, 1, seed=7, groups=groups)
    pos = one.check_state(two[0].state(6))
    assert pos == 12
    assert _take(one, pos, 8) == [b for pair in zip(*nxt) for b in pair]


def test_grouping_switch_is_a_resume_error():
    groups = _groups()
    state = ResumableBatches(N, MICRO, 0, 2, seed=1).state(4)
    with pytest.raises(ResumeError, match="group_by_length"):
        ResumableBatches(N, MICRO, 0, 2, seed=1, groups=groups).check_state(state)
    with pytest.raises(ValueError, match="length groups for 3/3 samples"):
        ResumableBatches(N, MICRO, 0, 2, seed=1, groups=([1, 2, 3], [True] * 3))
