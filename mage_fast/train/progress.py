"""A run's position, non-finite counters and RNG states: what a checkpoint carries besides the engine."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from mage_fast.train.dist import all_gather_objects
from mage_fast.train.sampler import ResumableBatches


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    """Python and NumPy draw per rank; torch starts from the same seed on every rank (same init)."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS raises under deterministic algorithms unless its workspace is fixed; the variable is
        # read when the first cuBLAS handle is made, so it is set before the model's first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def _set_rng_state(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])


@dataclass
class Progress:
    """The run's position and non-finite counters."""

    step: int = 0
    consumed: int = 0  # micro-batches taken from this rank's data order
    nonfinite: int = 0
    bad_run: list[int] = field(default_factory=list)  # the current run of skipped steps
    resumed_from: str | None = None

    def client_state(self, batches: ResumableBatches, world: int) -> dict:
        """What the checkpoint carries besides the engine. Every rank's RNG states go in
        (`rng_ranks`): ZeRO-2 writes the client state once, from rank 0, and ranks' torch RNGs
        differ once dropout has drawn for batches of other lengths."""
        rng = _rng_state()
        data = batches.state(self.consumed)
        out = {"step": self.step, "data": data, "nonfinite": self.nonfinite, "bad_run": self.bad_run, "rng": rng}
        return {**out, "rng_ranks": all_gather_objects(rng, world)}

    def restore(self, client: dict, batches: ResumableBatches, rank: int, world: int) -> None:
        """Position, counters and this rank's RNG states (a checkpoint of another world size: the
        `rng` that resize.load re-derived)."""
        self.step, self.consumed = int(client["step"]), batches.check_state(client["data"])
        self.nonfinite, self.bad_run = int(client["nonfinite"]), list(client["bad_run"])
        ranks = client.get("rng_ranks") or []
        _set_rng_state(ranks[rank] if len(ranks) == world else client["rng"])
