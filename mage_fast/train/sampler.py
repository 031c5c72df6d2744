"""Resumable distributed batches: the data order is a pure function of (seed, epoch, position)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mage_fast.configtools import ConfigError
from mage_fast.train.checkpoint import ResumeError

# Length grouping sorts windows of this many micro-batches (HF's LengthGroupedSampler: 50).
GROUP_WINDOW = 64


def _sorted_units(idx: list[int], lengths: Sequence[int], micro: int, window: int) -> list[list[int]]:
    """idx cut into windows of window·micro, each sorted longest first and cut into micro-sized
    units (the last one may be short)."""
    units = []
    for w in range(0, len(idx), window * micro):
        chunk = sorted(idx[w : w + window * micro], key=lambda i: -int(lengths[i]))
        units += [chunk[u : u + micro] for u in range(0, len(chunk), micro)]
    return units


def length_grouped_units(
    order: list[int], lengths: Sequence[int], has_image: Sequence[bool], micro: int, g: torch.Generator
) -> list[list[int]]:
    """LLaVA's group_by_modality_length on a shuffled `order` (a multiple of micro): image rows and
    text-only rows apart, each sorted by length within windows of GROUP_WINDOW micro-batches and cut
    into micro-batches; the two short tails form one mixed micro-batch; the micro-batches shuffled."""
    image = [i for i in order if has_image[i]]
    text = [i for i in order if not has_image[i]]
    units, tail = [], []
    for part in (image, text):
        u = _sorted_units(part, lengths, micro, GROUP_WINDOW)
        if u and len(u[-1]) < micro:
            tail += u.pop()
        units += u
    units += [u for u in _sorted_units(tail, lengths, micro, GROUP_WINDOW) if u]
    return [units[k] for k in torch.randperm(len(units), generator=g).tolist()]


class ResumableBatches:
    """Index batches for one rank. Each epoch a seeded permutation is cut to a multiple of
    world·micro (drop_last), rank r takes every world-th index; `state()` / `check_state()` give
    the exact position (in micro-batches consumed) so a resumed run sees the same batches as an uninterrupted one.

    With `groups` = (lengths, has_image) per sample, the epoch's permutation is regrouped into
    micro-batches of similar length and one modality (`length_grouped_units`) and rank r takes every
    world-th micro-batch. The grouping does not depend on the world size, so a resize keeps the rest
    of the epoch's micro-batches (the micro-batch size must stay the same)."""

    def __init__(
        self,
        n: int,
        micro: int,
        rank: int,
        world: int,
        seed: int,
        groups: tuple[Sequence[int], Sequence[bool]] | None = None,
    ) -> None:
        self.per_step = micro * world
        if n < self.per_step:
            raise ConfigError(
                f"{n} usable samples cannot fill one step of micro_batch_size={micro} per rank × {world} ranks: "
                f"lower micro_batch_size or add data"
            )
        if groups is not None and not len(groups[0]) == len(groups[1]) == n:
            raise ValueError(f"length groups for {len(groups[0])}/{len(groups[1])} samples, expected {n}")
        self.n, self.micro, self.rank, self.world, self.seed = n, micro, rank, world, seed
        self.groups = groups
        self.consumed = 0  # micro-batches the training loop has taken (set on resume)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.per_step

    def _epoch_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        if self.groups is not None:  # grouped over whole micro-batches, whatever the world size
            units = length_grouped_units(
                perm[: self.n // self.micro * self.micro].tolist(), *self.groups, self.micro, g
            )
            return units[: self.batches_per_epoch * self.world][self.rank :: self.world]
        order = perm[: self.batches_per_epoch * self.per_step]
        mine = order[self.rank :: self.world].tolist()
        return [mine[i : i + self.micro] for i in range(0, len(mine), self.micro)]

    def iter_from(self, consumed: int) -> Iterator[list[int]]:
        """Batches starting after `consumed` ones. The loop counts what it takes, so a
        DataLoader's prefetching never shifts the resume point."""
        self.epoch, position = divmod(consumed, self.batches_per_epoch)
        while True:
            batches = self._epoch_batches()
            yield from batches[position:]
            self.epoch, position = self.epoch + 1, 0

    def state(self, consumed: int) -> dict:
        grouped = self.groups is not None
        return {
            "consumed": consumed,
            "seed": self.seed,
            "n": self.n,
            "micro": self.micro,
            "world": self.world,
            "grouped": grouped,
        }

    def _rescale(self, consumed: int, old_per_step: int) -> int:
        """The same epoch and sample position (rounded down to a whole step of this world) for a
        state written with `old_per_step` samples per micro-batch round: each step takes a
        contiguous run of the epoch's permutation, so the rest of the epoch is unchanged."""
        old_bpe = self.n // old_per_step
        epoch, position = divmod(consumed, old_bpe)
        return epoch * self.batches_per_epoch + min(position * old_per_step // self.per_step, self.batches_per_epoch)

    def check_state(self, s: dict) -> int:
        """The `consumed` count of a saved state, after checking it is for this data and seed."""
        if s.get("n") != self.n or s.get("seed") != self.seed:
            raise ResumeError(
                f"checkpoint data order was for {s.get('n')} samples / seed {s.get('seed')}, "
                f"now {self.n} samples / seed {self.seed}: the data or seed changed; resume with the same data and seed, or use a new run_dir"
            )
        if bool(s.get("grouped", False)) != (self.groups is not None):
            raise ResumeError(
                f"checkpoint data order was {'' if s.get('grouped') else 'not '}grouped by length, now data.group_by_length="
                f"{self.groups is not None}: the data order changed; resume with the same setting, or use a new run_dir"
            )
        old_per_step = int(s.get("micro", self.micro)) * int(s.get("world", self.world))
        if old_per_step != self.per_step:  # resumed on another world size or micro-batch size
            return self._rescale(int(s["consumed"]), old_per_step)
        return int(s["consumed"])
