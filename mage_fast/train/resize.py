"""Resume on another number of ranks through DeepSpeed's universal checkpoint.

ZeRO-2/3 checkpoints hold one optimizer (and, under ZeRO-3, parameter) partition per rank, so a
run with another world size cannot read them directly. When the newest complete checkpoint was
written by another world size, its universal copy is used: one converted ahead of time
(`python -m mage_fast.train.convert`, DeepSpeed's `ds_to_universal`), else, with
`resume_resize` (the default), one that rank 0 converts at the start; without either the run
refuses in one line. The DeepSpeed config gets `checkpoint.load_universal`, and every rank takes
its new partition of the full fp32 weights and AdamW moments. The step, the LR schedule (its
state is in the client files) and the sample position carry over; the data order afterwards is
the same epoch permutation continued from the same sample, cut into the new world's steps (see
`ResumableBatches.check_state`), so it differs from an uninterrupted run's unless the samples
per step are the same.

What DeepSpeed's loader does not keep, and is restored here: its ZeRO-3 loader
(`DeepSpeedZeroOptimizer_Stage3.load_hp_checkpoint_state_from_checkpoint_dir_stage3`) copies the
hyperparameters of the checkpoint's param group 0 into every param group, so the per-part
learning rates (and group names) would be group 0's until the scheduler's next step. The same
loader puts one and the same `step` tensor into the AdamW state of every flat partition
(sub-group), and torch's AdamW increments `state["step"]` in place, so each update would add the
number of sub-groups to every counter and the bias correction would be wrong from the first step
after the resume: each partition gets its own copy. The per-rank python/numpy RNG states belong
to the old ranks and are re-derived for the new ranks.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

from mage_fast.train import checkpoint, convert
from mage_fast.train.dist import all_gather_objects, barrier


def saved_world(run_dir: str, tag: str) -> int | None:
    path = os.path.join(checkpoint.ckpt_root(run_dir), tag, checkpoint.META)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return int(json.load(f)["world_size"])


def prepare(run_dir: str, tag: str | None, ds: dict, world: int, rank: int, enabled: bool) -> str | None:
    """Before `deepspeed.initialize`: when checkpoint `tag` (the verified one the run resumes) has
    another world size, switch `ds` to universal loading from its converted copy: one made ahead
    of time (`python -m mage_fast.train.convert`), else, when `enabled`, one that rank 0 makes now.
    Returns the folder to load from, or None for an ordinary resume (or a refused resize, which
    `checkpoint.check_compatible` reports)."""
    old = saved_world(run_dir, tag) if tag else None
    if old is None or old == world:
        return None
    ready = all_gather_objects(convert.is_converted(run_dir, tag), world)
    if not enabled and not all(ready):
        if any(ready):
            missing = [r for r, ok in enumerate(ready) if not ok]
            raise checkpoint.ResumeError(
                f"the converted copy of {tag} ({convert.universal_root(run_dir)}/{tag}) is missing on ranks "
                f"{missing}: every rank loads it, so put it where they all see it"
            )
        return None
    if rank == 0 and not ready[0]:
        print(
            f"resize: {tag} was written by {old} ranks, this run has {world}: converting to a universal "
            f"checkpoint in {convert.universal_root(run_dir)}",
            flush=True,
        )
        try:
            convert.convert(run_dir, tag)
        except Exception as e:  # the other ranks wait at the barrier; the launcher stops them
            raise checkpoint.ResumeError(
                f"converting {tag} ({old} ranks) for {world} ranks failed: {type(e).__name__}: {e}. Convert it "
                f"alone with `python -m mage_fast.train.convert {run_dir} --tag {tag}`, or resume with "
                f"{old} ranks"
            ) from e
    elif rank == 0:
        print(f"resize: {tag} was written by {old} ranks, this run has {world}: loading its converted copy", flush=True)
    barrier()
    ds.setdefault("checkpoint", {})["load_universal"] = True
    return convert.universal_root(run_dir)


def load(engine, run_dir: str, tag: str, root: str, seed: int, rank: int) -> dict:
    """`engine.load_checkpoint` from the universal folder, then the per-group learning rates and
    names of this run's optimizer, and fresh per-rank RNG states. Returns the client state."""
    groups = [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]
    _, client = engine.load_checkpoint(root, tag=tag)
    if client is None:
        raise checkpoint.ResumeError(f"universal checkpoint {tag} in {root} could not be loaded")
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for state in inner.state.values():  # one step counter per flat partition, not one shared
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
    lrs = engine.lr_scheduler.get_last_lr()
    for g, mine, lr in zip(engine.optimizer.param_groups, groups, lrs):
        g.update(mine)
        g["lr"] = lr
    step = int(client["step"])
    random.seed(seed * 1_000_003 + rank * 7919 + step)
    np.random.seed((seed * 1_000_003 + rank * 7919 + step) % 2**32)
    client["rng"] = {"torch": client["rng"]["torch"], "python": random.getstate(), "numpy": np.random.get_state()}
    if rank == 0:
        print(f"resize: loaded {tag} from {root} (universal)", flush=True)
    return client
