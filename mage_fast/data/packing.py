"""Sequence packing: a micro-batch's samples, with their images, in rows of at most `capacity` tokens.

The plan is first-fit-decreasing over the micro-batch (the window of the shuffled order that the
sampler hands the collator), so it is a pure function of the samples' lengths: the same data order
gives the same packs on every rank, after a resume and after a resize. FFD fixes the fewest rows it
finds at `capacity`; the plan then takes the smallest capacity that still needs no more rows, so
the rows come out of similar length and the batch's padding (to its longest row) stays small.

A packed batch marks each sample's span by its `position_ids`, which restart at 0 per sample (and
at the padding tail), and by `sample_rows`, the row of each sample; the model keeps attention
inside a span (HF builds a block-diagonal causal mask from packed position ids for sdpa / eager,
and flash-attn's varlen path on a GPU).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mage_fast.labels import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in rows whose lengths sum to <= capacity: the longest first, each into
    the first row with room (ties in index order, so the plan is deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"a sample of {n} tokens does not fit a packed row of {capacity} tokens")
        r = next((k for k, f in enumerate(free) if f >= n), None)
        if r is None:
            rows.append([i])
            free.append(capacity - n)
        else:
            rows[r].append(i)
            free[r] -= n
    return rows


def plan_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """FFD rows at `capacity`, rebalanced: the FFD plan at the smallest capacity (binary search
    between the longest sample / the even share and `capacity`) that keeps FFD's row count.

    lengths: tokens per sample (each <= capacity). Returns rows of sample indices, every index once.
    """
    if not lengths:
        return []
    best = first_fit_decreasing(lengths, capacity)
    k = len(best)
    lo, hi = max(max(int(n) for n in lengths), -(-sum(int(n) for n in lengths) // k)), capacity
    while lo < hi:  # FFD's row count is not strictly monotone in the capacity: keep the best found
        mid = (lo + hi) // 2
        rows = first_fit_decreasing(lengths, mid)
        if len(rows) <= k:
            best, hi = rows, mid
        else:
            lo = mid + 1
    return best


def pack_rows(samples: Sequence[dict], capacity: int, pad_id: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Samples → (the samples in packed order, row tensors).

    Row tensors, R rows of L = the longest row's tokens: ``input_ids`` (R, L) padded with pad_id;
    ``labels`` (R, L), -100 at padding and at each sample's first position (in an unpacked row
    position 0 is never a target; here the previous sample's last token would predict it);
    ``attention_mask`` (R, L) 1 on real tokens; ``position_ids`` (R, L) restarting at 0 per sample
    and at the padding tail; ``sample_rows`` (S,) the row of each sample in packed order (row-major,
    the order of the images and ids too).
    """
    lengths = [len(s["input_ids"]) for s in samples]
    for s, n in zip(samples, lengths):
        if n > capacity:
            raise ValueError(
                f"sample {s['id']!r}: {n} tokens exceed the packed row length {capacity} (data.max_length); "
                f"the dataset skips such rows as over_length"
            )
    plan = plan_rows(lengths, capacity)
    R, L = len(plan), max(sum(lengths[i] for i in row) for row in plan)
    input_ids = torch.full((R, L), pad_id, dtype=torch.long)
    labels = torch.full((R, L), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((R, L), dtype=torch.long)
    position_ids = torch.zeros((R, L), dtype=torch.long)
    order, rows_of = [], []
    for r, row in enumerate(plan):
        at = 0
        for i in row:
            n, s = lengths[i], samples[i]
            input_ids[r, at : at + n] = s["input_ids"]
            labels[r, at + 1 : at + n] = s["labels"][1:]
            attention_mask[r, at : at + n] = 1
            position_ids[r, at : at + n] = torch.arange(n)
            order.append(s)
            rows_of.append(r)
            at += n
        position_ids[r, at:] = torch.arange(L - at)
    tensors = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "sample_rows": torch.tensor(rows_of, dtype=torch.long),
    }
    return order, tensors
