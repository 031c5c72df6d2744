"""The data start-up of a distributed run: the image check split over the ranks and cached in
run_dir (`mage_fast.data.scan`), and the loader's late decode failures of every rank collected."""

from __future__ import annotations

import functools
import glob
import os

from mage_fast.data.llava import read_late_logs
from mage_fast.data.scan import scan_images
from mage_fast.train.dist import all_gather_objects

CHECK_CACHE = "image_check.json"
LATE_LOG = "data_late.rank{rank}.jsonl"


def dataset_hooks(run_dir: str, rank: int, world: int, workers: int) -> dict:
    """`image_check` and `late_log` keyword arguments of `LlavaDataset.from_config` for this rank.
    The check runs in `workers` processes per rank (data.num_workers; at least one)."""
    gather = functools.partial(all_gather_objects, world=world)
    check = functools.partial(
        scan_images,
        rank=rank,
        world=world,
        gather=gather,
        workers=max(1, workers),
        cache=os.path.join(run_dir, CHECK_CACHE),
    )
    return {"image_check": check, "late_log": os.path.join(run_dir, LATE_LOG.format(rank=rank))}


def late_failures(run_dir: str) -> dict:
    """Images that passed the check but failed to decode in a loader (prefetched samples
    included), by reason, with the sample that stood in for each: every rank's log."""
    return read_late_logs(sorted(glob.glob(os.path.join(run_dir, LATE_LOG.format(rank="*")))))
