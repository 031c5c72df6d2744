"""Held-out exact-match accuracy during training, with every rank generating (ZeRO-3 safe).

Under ZeRO-3 each module call gathers its parameters with all ranks, so the ranks must make the
same calls: every rank takes an equal share of each prompt-length bucket (padded with repeats of
the bucket's first item), answers it in the same number of batches, and decodes for exactly
`max_new_tokens` steps. The answers are gathered and scored identically on every rank.
"""

from __future__ import annotations

import math
import os

import torch

from mage_fast.data.image import ImageTransform
from mage_fast.data.llava import read_rows
from mage_fast.train.answering import answer, length_buckets, prepare, score
from mage_fast.train.dist import all_gather_objects


class AccuracyEval:
    """Items of an answers file (first `limit` rows; 0: all) prepared once, scored on demand."""

    def __init__(
        self,
        path: str,
        model,
        tok,
        transform: ImageTransform,
        limit: int = 0,
        batch_size: int = 64,
        max_new_tokens: int = 8,
    ) -> None:
        rows = read_rows(path)
        rows = rows[:limit] if limit else rows
        self.items = prepare(rows, model, tok, os.path.dirname(os.path.abspath(path)), transform)
        if not self.items:
            raise ValueError(f"{path}: no usable rows with reference answers for the accuracy eval")
        self.tok, self.batch_size, self.max_new_tokens = tok, batch_size, max_new_tokens

    def _share(self, rank: int, world: int) -> list[list[dict]]:
        """This rank's batches: the same count and sizes on every rank."""
        batches = []
        for group in length_buckets([dict(it, idx=i) for i, it in enumerate(self.items)]):
            per = math.ceil(len(group) / world)
            mine = [dict(it, pad=False) for it in group[rank * per : (rank + 1) * per]]
            mine += [dict(group[0], pad=True) for _ in range(per - len(mine))]
            batches += [mine[i : i + self.batch_size] for i in range(0, per, self.batch_size)]
        return batches

    @torch.no_grad()
    def run(self, model, rank: int, world: int) -> tuple[dict, list[dict]]:
        """(accuracy per qtype and "overall", the answered items), the same on every rank.

        model: the engine's module."""
        was_training = model.training
        model.eval()
        texts = {}
        for batch in self._share(rank, world):
            answer(model, self.tok, batch, self.max_new_tokens, synced=world > 1)
            texts.update({it["idx"]: it["text"] for it in batch if not it["pad"]})
        model.train(was_training)
        for part in all_gather_objects(texts, world):
            texts.update(part)
        items = [dict(it, text=texts[i]) for i, it in enumerate(self.items)]
        return score(items)[0], items


def converged(acc: dict[str, float], bar: float) -> bool:
    """Every question type (not "overall") at `bar` or above; never with `bar` 0 (early stop off).

    acc: accuracy per qtype and "overall", as `AccuracyEval.run` returns it (the same on every
    rank, so every rank stops at the same step)."""
    types = [v for k, v in acc.items() if k != "overall"]
    return bar > 0 and bool(types) and min(types) >= bar
