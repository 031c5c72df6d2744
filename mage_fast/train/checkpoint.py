"""Checkpoints that are trusted only when complete.

`run_dir/checkpoints/stepNNNNNNNN/` is written by every rank through DeepSpeed; after a barrier,
rank 0 writes `COMMITTED` (fsynced) last. Resume takes the newest folder that has it; folders
without it (a kill mid-save) are ignored and cleaned. The last `keep_last` complete ones are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

from mage_fast.train.dist import barrier

MARKER = "COMMITTED"
_TAG = re.compile(r"^step(\d{8})$")


def ckpt_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def complete_tags(run_dir: str) -> list[str]:
    """Complete checkpoint tags, oldest first."""
    root = ckpt_root(run_dir)
    if not os.path.isdir(root):
        return []
    tags = [t for t in os.listdir(root) if _TAG.match(t) and os.path.isfile(os.path.join(root, t, MARKER))]
    return sorted(tags)


def newest(run_dir: str) -> str | None:
    tags = complete_tags(run_dir)
    return tags[-1] if tags else None


def _fsync_tree(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def save(engine, run_dir: str, step: int, client_state: dict, keep_last: int, rank: int) -> str:
    tag = tag_of(step)
    root = ckpt_root(run_dir)
    engine.save_checkpoint(root, tag=tag, client_state=client_state, save_latest=False)
    _fsync_tree(os.path.join(root, tag))  # each rank its own files (same tree on one machine)
    barrier()
    if rank == 0:
        marker = os.path.join(root, tag, MARKER)
        with open(marker + ".tmp", "w") as f:
            json.dump({"step": step, "time": time.time()}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(marker + ".tmp", marker)
        _prune(root, keep_last)
    barrier()
    return tag


def _prune(root: str, keep_last: int) -> None:
    done = sorted(t for t in os.listdir(root) if _TAG.match(t) and os.path.isfile(os.path.join(root, t, MARKER)))
    newest_done = done[-1] if done else ""
    for t in os.listdir(root):
        if not _TAG.match(t):
            continue
        incomplete_and_old = not os.path.isfile(os.path.join(root, t, MARKER)) and t < newest_done
        if t in done[:-keep_last] or incomplete_and_old:
            shutil.rmtree(os.path.join(root, t), ignore_errors=True)


def load(engine, run_dir: str, tag: str) -> dict:
    """Load model, optimizer and scheduler; returns the client state saved with it."""
    _, client = engine.load_checkpoint(ckpt_root(run_dir), tag=tag)
    if client is None:
        raise RuntimeError(f"checkpoint {tag} in {ckpt_root(run_dir)} could not be loaded")
    return client
