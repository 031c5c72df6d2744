"""Resumable distributed batches: the data order is a pure function of (seed, epoch, position)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mage_fast.configtools import ConfigError
from mage_fast.train.checkpoint import ResumeError


class ResumableBatches:
    """Index batches for one rank. Each epoch a seeded permutation is cut to a multiple of
    world·micro (drop_last), rank r takes every world-th index; `state()` / `check_state()` give
    the exact position (in micro-batches consumed) so a resumed run sees the same batches as an uninterrupted one."""

    def __init__(self, n: int, micro: int, rank: int, world: int, seed: int) -> None:
        self.per_step = micro * world
        if n < self.per_step:
            raise ConfigError(
                f"{n} usable samples cannot fill one step of micro_batch_size={micro} per rank × {world} ranks: "
                f"lower micro_batch_size or add data"
            )
        self.n, self.micro, self.rank, self.world, self.seed = n, micro, rank, world, seed
        self.consumed = 0  # micro-batches the training loop has taken (set on resume)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.per_step

    def _epoch_batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.batches_per_epoch * self.per_step]
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
        return {"consumed": consumed, "seed": self.seed, "n": self.n, "micro": self.micro, "world": self.world}

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
        old_per_step = int(s.get("micro", self.micro)) * int(s.get("world", self.world))
        if old_per_step != self.per_step:  # resumed on another world size or micro-batch size
            return self._rescale(int(s["consumed"]), old_per_step)
        return int(s["consumed"])
