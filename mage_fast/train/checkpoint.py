"""Checkpoints that are trusted only when complete and intact.

`run_dir/checkpoints/stepNNNNNNNN/` is written by every rank through DeepSpeed (its `latest` file
is never written: it would name a folder before all ranks finish). After a barrier each rank
fsyncs and hashes the files it owns (`owner`: the rank in DeepSpeed's `zero_pp_rank_R_` name,
rank 0 for the rest), reading them back; rank 0 writes `mage_meta.json` (world size, parameter
shapes) and then `COMMITTED` last, which lists every file with its size and blake2b hash.

Resume takes the newest committed folder whose files match its marker: every rank checks its own
files, the ranks gather their verdicts, and a damaged checkpoint is reported in one line naming the
file, renamed to `stepNNNNNNNN.damaged` (kept for inspection, never loaded) and the next older one
is tried. Folders without the marker (a kill mid-save) are ignored and removed. The newest
`keep_last` committed checkpoints whose files have their recorded sizes are kept.

Fault injection (tests): MAGE_FAST_KILL_IN_SAVE=N makes every rank SIGKILL itself while saving
step N, after DeepSpeed wrote its files and before the marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time

from mage_fast.train.dist import all_gather_objects, barrier

MARKER = "COMMITTED"
META = "mage_meta.json"
DAMAGED = ".damaged"
_TAG = re.compile(r"^step(\d{8})$")
_OWNER = re.compile(r"zero_pp_rank_(\d+)_")
_CHUNK = 1 << 20


class ResumeError(RuntimeError):
    """No checkpoint can be resumed by this run (other model config or world size, or all damaged)."""


def ckpt_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def tags(run_dir: str, committed: bool) -> list[str]:
    """Checkpoint tags of `run_dir` with (or without) the marker, oldest first."""
    root = ckpt_root(run_dir)
    if not os.path.isdir(root):
        return []
    found = (t for t in os.listdir(root) if _TAG.match(t))
    return sorted(t for t in found if os.path.isfile(os.path.join(root, t, MARKER)) == committed)


def complete_tags(run_dir: str) -> list[str]:
    """Committed checkpoint tags (not yet verified), oldest first."""
    return tags(run_dir, committed=True)


def remove_incomplete(run_dir: str) -> list[str]:
    """Delete checkpoint folders without a marker (rank 0 only, before training); returns their tags."""
    gone = tags(run_dir, committed=False)
    for t in gone:
        shutil.rmtree(os.path.join(ckpt_root(run_dir), t), ignore_errors=True)
    return gone


def owner(name: str, world: int) -> int:
    """The rank that writes, hashes and verifies the checkpoint file `name`."""
    m = _OWNER.search(name)
    return int(m.group(1)) % world if m else 0


def file_record(path: str) -> dict:
    """{"size", "blake2b"} of a file, read back in 1 MiB chunks and fsynced."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    return {"size": os.path.getsize(path), "blake2b": h.hexdigest()}


def _own_records(folder: str, rank: int, world: int) -> dict[str, dict]:
    names = sorted(n for n in os.listdir(folder) if n not in (MARKER, META) and not n.endswith(".tmp"))
    return {n: file_record(os.path.join(folder, n)) for n in names if owner(n, world) == rank}


def _write_synced(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)  # the directory entries too
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save(engine, run_dir: str, step: int, client_state: dict, keep_last: int, rank: int, world: int, meta: dict) -> str:
    """Write, hash and commit checkpoint `step` (call on every rank); prunes to `keep_last`."""
    tag, root = tag_of(step), ckpt_root(run_dir)
    folder = os.path.join(root, tag)
    if rank == 0 and os.path.exists(os.path.join(folder, MARKER)):
        os.remove(os.path.join(folder, MARKER))  # rewritten below once the new files are hashed
    barrier()
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    # DeepSpeed's universal converter needs this key to convert ZeRO-1/2 checkpoints (resize).
    info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(root, tag=tag, client_state={**client_state, **info}, save_latest=False)
    if os.environ.get("MAGE_FAST_KILL_IN_SAVE") == str(step):
        print(f"fault injection: rank {rank} SIGKILLs itself while saving {tag}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    barrier()  # every rank's files are written
    records = all_gather_objects(_own_records(folder, rank, world), world)
    if rank == 0:
        files = {n: r for part in records for n, r in part.items()}
        _write_synced(os.path.join(folder, META), meta)
        files[META] = file_record(os.path.join(folder, META))
        _write_synced(os.path.join(folder, MARKER), {"step": step, "time": time.time(), "files": files})
        _fsync_dir(folder)
        _prune(run_dir, keep_last)
    barrier()
    return tag


def check_files(folder: str, rank: int | None = None, world: int = 1) -> str | None:
    """Compare the files of a committed checkpoint with its marker; the first problem, or None.
    `rank` checks only that rank's files (`owner`); None checks them all (offline verify)."""
    with open(os.path.join(folder, MARKER)) as f:
        files: dict[str, dict] = json.load(f).get("files", {})
    if not files:
        return f"{MARKER} lists no files"
    for name, want in sorted(files.items()):
        if rank is not None and owner(name, world) != rank:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} recorded"
        if file_record(path)["blake2b"] != want["blake2b"]:
            return f"{name} has another content than recorded (blake2b {want['blake2b']})"
    return None


def _sizes_ok(folder: str) -> bool:
    """Every file the marker lists exists with its recorded size (a cheap check: no hashing)."""
    try:
        with open(os.path.join(folder, MARKER)) as f:
            files = json.load(f).get("files", {})
        return bool(files) and all(os.path.getsize(os.path.join(folder, n)) == r["size"] for n, r in files.items())
    except (OSError, ValueError):
        return False


def _prune(run_dir: str, keep_last: int) -> None:
    """Keep the newest `keep_last` committed checkpoints whose sizes check out; delete older ones,
    and incomplete folders older than the newest kept one. A checkpoint whose files fail the check
    does not count, so the last good one is never deleted in favour of a damaged one."""
    root = ckpt_root(run_dir)
    good = [t for t in complete_tags(run_dir) if _sizes_ok(os.path.join(root, t))]
    if not good:
        return
    keep = set(good[-keep_last:])
    oldest_kept = min(keep)
    for t in complete_tags(run_dir) + tags(run_dir, committed=False):
        if t not in keep and t < oldest_kept:
            shutil.rmtree(os.path.join(root, t), ignore_errors=True)


def resume_tag(run_dir: str, rank: int, world: int) -> str | None:
    """The newest committed checkpoint that every rank verified, or None when there is none
    (a fresh start). Damaged ones are reported, set aside and the next older one tried; when
    committed checkpoints exist but all are damaged, a ResumeError says so."""
    if rank == 0:
        for gone in remove_incomplete(run_dir):
            print(f"removed incomplete checkpoint {gone} (no {MARKER} marker)", flush=True)
    barrier()
    committed, problems = complete_tags(run_dir), []
    for tag in reversed(committed):
        folder = os.path.join(ckpt_root(run_dir), tag)
        found = [p for p in all_gather_objects(check_files(folder, rank, world), world) if p]
        if not found:
            return tag
        problems.append(f"{tag}: {found[0]}")
        if rank == 0:
            print(
                f"checkpoint {tag} is damaged ({found[0]}): set aside as {tag}{DAMAGED}, trying an older one",
                flush=True,
            )
            shutil.rmtree(folder + DAMAGED, ignore_errors=True)
            os.rename(folder, folder + DAMAGED)
        barrier()
    if committed:
        raise ResumeError(
            f"no intact checkpoint in {ckpt_root(run_dir)}: {'; '.join(problems)}. Restore the files from a "
            f"copy, or start over with resume=false or a new run_dir"
        )
    return None


def check_compatible(run_dir: str, tag: str, shapes: dict[str, list[int]], world: int, resized: bool = False) -> None:
    """Fail before loading when the checkpoint's parameters or world size differ from this run's
    (`resized`: it is loaded through its universal copy, any world size will do)."""
    with open(os.path.join(ckpt_root(run_dir), tag, META)) as f:
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
