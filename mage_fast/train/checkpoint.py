"""Checkpoints that are trusted only when complete.

`run_dir/checkpoints/stepNNNNNNNN/` is written by every rank through DeepSpeed (its `latest` file
is never written: it would name a folder before all ranks finish); each rank fsyncs its files,
and after a barrier rank 0 writes `mage_meta.json` (world size, parameter shapes) and then
`COMMITTED` (fsynced) last. Resume takes the newest folder that has the marker; folders without
it (a kill mid-save) are ignored and removed. The last `keep_last` complete ones are kept.

Fault injection (tests): MAGE_FAST_KILL_IN_SAVE=N makes every rank SIGKILL itself while saving
step N, after DeepSpeed wrote its files and before the marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time

from mage_fast.train.dist import barrier

MARKER = "COMMITTED"
META = "mage_meta.json"
_TAG = re.compile(r"^step(\d{8})$")


class ResumeError(RuntimeError):
    """The newest checkpoint cannot be resumed by this run (other model config or world size)."""


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


def remove_incomplete(run_dir: str) -> list[str]:
    """Delete checkpoint folders without a marker (rank 0 only, before training); returns their tags."""
    root = ckpt_root(run_dir)
    if not os.path.isdir(root):
        return []
    gone = [t for t in sorted(os.listdir(root)) if _TAG.match(t) and not os.path.isfile(os.path.join(root, t, MARKER))]
    for t in gone:
        shutil.rmtree(os.path.join(root, t), ignore_errors=True)
    return gone


def _fsync_tree(path: str) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _write_synced(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def save(engine, run_dir: str, step: int, client_state: dict, keep_last: int, rank: int, meta: dict) -> str:
    tag = tag_of(step)
    root = ckpt_root(run_dir)
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    # DeepSpeed's universal converter needs this key to convert ZeRO-1/2 checkpoints (resize).
    info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(root, tag=tag, client_state={**client_state, **info}, save_latest=False)
    _fsync_tree(os.path.join(root, tag))  # each rank its own files (same tree on one machine)
    if os.environ.get("MAGE_FAST_KILL_IN_SAVE") == str(step):
        print(f"fault injection: rank {rank} SIGKILLs itself while saving {tag}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    barrier()
    if rank == 0:
        _write_synced(os.path.join(root, tag, META), meta)
        _write_synced(os.path.join(root, tag, MARKER), {"step": step, "time": time.time()})
        dfd = os.open(os.path.join(root, tag), os.O_RDONLY)  # the directory entries too
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
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


def check_compatible(run_dir: str, tag: str, shapes: dict[str, list[int]], world: int, resized: bool = False) -> None:
    """Fail before loading when the checkpoint's parameters or world size differ from this run's
    (`resized`: it is loaded through its universal copy, any world size will do)."""
    path = os.path.join(ckpt_root(run_dir), tag, META)
    if not os.path.isfile(path):
        return  # written before metadata existed: DeepSpeed's own checks apply
    with open(path) as f:
        meta = json.load(f)
    theirs: dict[str, list[int]] = meta["shapes"]
    for name in sorted(set(theirs) | set(shapes)):
        a, b = theirs.get(name), shapes.get(name)
        if a != b:
            module = name.rsplit(".", 1)[0]
            have = "absent" if a is None else f"shape {tuple(a)}"
            want = "absent" if b is None else f"shape {tuple(b)}"
            raise ResumeError(
                f"cannot resume {ckpt_root(run_dir)}/{tag}: module {module} parameter {name} has {have} in the "
                f"checkpoint but {want} in this model config; use the checkpoint's model config "
                f"({run_dir}/config.yaml) or a new run_dir (resume=false starts over)"
            )
    if int(meta["world_size"]) != world and not resized:
        root = ckpt_root(run_dir)
        raise ResumeError(
            f"cannot resume {root}/{tag}: it was written by {meta['world_size']} ranks and this run has {world}; "
            f"ZeRO partitions are per rank and resume_resize=false. Resume with "
            f"`deepspeed --num_gpus {meta['world_size']} ...` (same config), or set resume_resize=true (or run "
            f"`python -m mage_fast.train.convert {run_dir} --tag {tag}` first) to load it through DeepSpeed's "
            f"universal checkpoint; the fp32 weights alone can be consolidated with "
            f"`python {root}/zero_to_fp32.py {root} {root}/{tag}_fp32 --tag {tag}`"
        )


def load(engine, run_dir: str, tag: str) -> dict:
    """Load model, optimizer and scheduler; returns the client state saved with it."""
    _, client = engine.load_checkpoint(ckpt_root(run_dir), tag=tag)
    if client is None:
        raise RuntimeError(f"checkpoint {tag} in {ckpt_root(run_dir)} could not be loaded")
    return client
