"""Checkpoints that are trusted only when complete and intact.

`run_dir/checkpoints/stepNNNNNNNN/` is written by every rank through DeepSpeed (its `latest` file
is never written: it would name a folder before all ranks finish). After a barrier each rank
fsyncs and hashes the files it owns (`zero_pp_rank_R_` files are rank R's, the rest the marker
writer's), reading them back; the writer (rank 0; on node-local storage local rank 0 of every
machine: `mage_fast.train.ckpt_storage`) writes `mage_meta.json` (world size, parameter shapes)
and then its marker last (`COMMITTED`, or `COMMITTED.rank<R>` per node), which lists the files
with their sizes and blake2b hashes.

Resume takes the newest checkpoint that every rank finds committed and intact: each rank checks
its own files against the marker that covers it, the ranks gather their verdicts, so they agree
(also when one node's disk lacks a checkpoint the others have). A damaged checkpoint is reported
in one line naming the file, renamed to `stepNNNNNNNN.damaged` (kept for inspection, never
loaded) and the next older one is tried. Folders without any marker (a kill mid-save) are
ignored and removed. The newest `keep_last` committed checkpoints whose files have their
recorded sizes are kept.

Fault injection (tests): `faults.kill_in_save: N` makes every rank SIGKILL itself while saving
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

from mage_fast.train import ckpt_storage
from mage_fast.train.ckpt_storage import MARKER, Storage
from mage_fast.train.dist import all_gather_objects, barrier

META = "mage_meta.json"
DAMAGED = ".damaged"
_TAG = re.compile(r"^step(\d{8})$")
_CHUNK = 1 << 20


class ResumeError(RuntimeError):
    """No checkpoint can be resumed by this run (other model config or world size, or all damaged)."""


def ckpt_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def tag_of(step: int) -> str:
    return f"step{step:08d}"


def tags(run_dir: str, committed: bool) -> list[str]:
    """Checkpoint tags of `run_dir` with (or without) a marker, oldest first."""
    root = ckpt_root(run_dir)
    if not os.path.isdir(root):
        return []
    found = (t for t in os.listdir(root) if _TAG.match(t))
    return sorted(t for t in found if ckpt_storage.has_marker(os.path.join(root, t)) == committed)


def complete_tags(run_dir: str) -> list[str]:
    """Committed checkpoint tags (not yet verified), oldest first."""
    return tags(run_dir, committed=True)


def newest(run_dir: str) -> str | None:
    """The newest committed checkpoint tag of `run_dir` (not yet verified), or None."""
    found = complete_tags(run_dir)
    return found[-1] if found else None


def remove_incomplete(run_dir: str) -> list[str]:
    """Delete checkpoint folders without a marker (the folder's writer, before training); returns their tags."""
    gone = tags(run_dir, committed=False)
    for t in gone:
        shutil.rmtree(os.path.join(ckpt_root(run_dir), t), ignore_errors=True)
    return gone


def file_record(path: str) -> dict:
    """{"size", "blake2b"} of a file, read back in 1 MiB chunks and fsynced."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        os.fsync(f.fileno())
    return {"size": os.path.getsize(path), "blake2b": h.hexdigest()}


def _own_records(folder: str, st: Storage) -> dict[str, dict]:
    names = sorted(
        n for n in os.listdir(folder) if n != META and not ckpt_storage.is_marker(n) and not n.endswith(".tmp")
    )
    return {n: file_record(os.path.join(folder, n)) for n in names if ckpt_storage.mine(n, st.rank, st)}


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


def _remove_markers(folder: str) -> None:
    """Before a folder is written again: its markers go first, so a kill mid-save leaves it uncommitted."""
    for name in ckpt_storage.read_markers(folder):
        os.remove(os.path.join(folder, name))


def save(
    engine, run_dir: str, step: int, client_state: dict, keep_last: int, st: Storage, meta: dict, kill_at: int = 0
) -> str:
    """Write, hash and commit checkpoint `step` (call on every rank); prunes to `keep_last`.
    `kill_at == step`: every rank SIGKILLs itself before the marker (a test's fault)."""
    tag, root = tag_of(step), ckpt_root(run_dir)
    folder = os.path.join(root, tag)
    if st.writer:
        _remove_markers(folder)  # rewritten below once the new files are hashed
    barrier()
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    # DeepSpeed's universal converter needs this key to convert ZeRO-1/2 checkpoints (resize).
    info = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(root, tag=tag, client_state={**client_state, **info}, save_latest=False)
    if kill_at and kill_at == step:
        print(f"fault injection: rank {st.rank} SIGKILLs itself while saving {tag}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    barrier()  # every rank's files are written
    records = all_gather_objects(_own_records(folder, st), st.world)
    if st.writer:
        ranks = st.node_ranks if st.node_local else range(st.world)
        files = {n: r for i, part in enumerate(records) if i in ranks for n, r in part.items()}
        _write_synced(os.path.join(folder, META), meta)
        files[META] = file_record(os.path.join(folder, META))
        marker = {"step": step, "time": time.time(), "world": st.world, "ranks": list(ranks), "files": files}
        _write_synced(os.path.join(folder, st.marker), marker)
        _fsync_dir(folder)
        _prune(run_dir, keep_last)
    barrier()
    return tag


def _check_listed(folder: str, files: dict[str, dict]) -> str | None:
    """The first of `files` that is missing or differs from its record, or None."""
    for name, want in sorted(files.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} recorded"
        if file_record(path)["blake2b"] != want["blake2b"]:
            return f"{name} has another content than recorded (blake2b {want['blake2b']})"
    return None


def check_files(folder: str) -> str | None:
    """Offline: every file that every marker of a committed checkpoint lists; the first problem, or None."""
    found = ckpt_storage.read_markers(folder)
    for name, marker in found.items():
        files = marker.get("files", {})
        problem = _check_listed(folder, files) if files else f"{name} lists no files"
        if problem:
            return problem
    return None if found else f"no {MARKER} marker"


def incomplete(folder: str) -> str | None:
    """Why a folder does not hold every saved rank's files (markers missing for some), or None."""
    markers = ckpt_storage.read_markers(folder)
    saved = _saved_world(folder, markers)
    if not markers or saved is None:
        return f"no {MARKER} marker"
    have = {r for m in markers.values() for r in ckpt_storage.covered(m, saved)}
    lost = [r for r in range(saved) if r not in have]
    if lost:
        return f"no marker covers the files of ranks {lost} (node-local storage: copy every node's folder into it)"
    return None


def _saved_world(folder: str, markers: dict[str, dict]) -> int | None:
    for marker in markers.values():
        if "world" in marker:
            return int(marker["world"])
    try:
        with open(os.path.join(folder, META)) as f:
            return int(json.load(f)["world_size"])
    except (OSError, ValueError, KeyError):
        return None


def _sizes_ok(folder: str) -> bool:
    """Every file the markers list exists with its recorded size (a cheap check: no hashing)."""
    found = ckpt_storage.read_markers(folder)
    try:
        files = {n: r for m in found.values() for n, r in m.get("files", {}).items()}
        return bool(files) and all(os.path.getsize(os.path.join(folder, n)) == r["size"] for n, r in files.items())
    except (OSError, ValueError, KeyError, TypeError):
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


def verdict(folder: str, st: Storage) -> tuple[str, str] | None:
    """This rank's view of a checkpoint folder: None when the files it checks match the marker
    that covers them, else (kind, what): kind "missing" (not committed here for a rank this rank
    checks), "damaged" (a file differs from its record) or "resize" (node-local storage and
    another world size)."""
    markers = ckpt_storage.read_markers(folder)
    if not markers:
        return "missing", f"no {MARKER} marker in {folder}"
    saved = _saved_world(folder, markers) or st.world
    if st.node_local and saved != st.world:
        return "resize", (
            f"it was written by {saved} ranks on node-local storage and this run has {st.world}: copy every node's "
            f"checkpoints folder into one folder that all ranks see and resume with use_node_local_storage=false"
        )
    for rank in st.ranks_to_check(saved):
        cover = [m for m in markers.values() if rank in ckpt_storage.covered(m, saved)]
        if not cover:
            return "missing", f"no marker in {folder} covers rank {rank}'s files (its node did not commit it)"
        files = {n: r for n, r in cover[0].get("files", {}).items() if ckpt_storage.mine(n, rank, st)}
        problem = _check_listed(folder, files)
        if problem:
            return "damaged", problem
    return None


def _set_aside(folder: str, tag: str, problem: str, verdicts: list, st: Storage) -> None:
    """A damaged checkpoint is renamed by the writer of each folder that holds a damaged file."""
    holders = st.node_ranks if st.node_local else range(st.world)
    if st.writer and any(verdicts[r] and verdicts[r][0] == "damaged" for r in holders):
        shutil.rmtree(folder + DAMAGED, ignore_errors=True)
        os.rename(folder, folder + DAMAGED)
    if st.rank == 0:
        print(f"checkpoint {tag} is damaged ({problem}): set aside as {tag}{DAMAGED}, trying an older one", flush=True)


def resume_tag(run_dir: str, st: Storage) -> str | None:
    """The newest checkpoint that every rank verified, or None when no rank has one (a fresh
    start). Damaged ones are reported, set aside and the next older one tried; one that some
    rank's disk lacks is skipped. When checkpoints exist but none is intact on every rank, a
    ResumeError says so in one line."""
    if st.writer:
        for gone in remove_incomplete(run_dir):
            print(f"removed incomplete checkpoint {gone} on rank {st.rank} (no {MARKER} marker)", flush=True)
    barrier()
    candidates = sorted({t for part in all_gather_objects(complete_tags(run_dir), st.world) for t in part})
    problems = []
    for tag in reversed(candidates):
        folder = os.path.join(ckpt_root(run_dir), tag)
        verdicts = all_gather_objects(verdict(folder, st), st.world)
        bad = [(r, v) for r, v in enumerate(verdicts) if v]
        if not bad:
            return tag
        rank, (kind, what) = next(((r, v) for r, v in bad if v[0] != "missing"), bad[0])
        if kind == "resize":
            raise ResumeError(f"cannot resume {ckpt_root(run_dir)}/{tag}: {what}")
        problems.append(f"{tag}: {what} (rank {rank})")
        if kind == "damaged":
            _set_aside(folder, tag, what, verdicts, st)
        elif st.rank == 0:
            print(
                f"checkpoint {tag} is not committed on every rank (rank {rank}: {what}), trying an older one",
                flush=True,
            )
        barrier()
    if candidates:
        where = (
            " Node-local storage: each machine resumes from its own disk; give every machine the checkpoints "
            "folder of the node whose --node_rank it takes, or copy all nodes' folders into one shared folder."
            if st.node_local
            else ""
        )
        raise ResumeError(
            f"no intact checkpoint in {ckpt_root(run_dir)} on every rank: {'; '.join(problems)}.{where} Restore the "
            f"files from a copy, or start over with resume=false or a new run_dir"
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
            f"ZeRO partitions are per rank, resume_resize=false and it has no converted copy. Resume with "
            f"`deepspeed --num_gpus {meta['world_size']} ...` (same config), or convert it first with "
            f"`python -m mage_fast.train.convert {run_dir} --tag {tag}` (a run then loads DeepSpeed's universal "
            f"copy, also with resume_resize=false), or set resume_resize=true to convert it at the start; the "
            f"fp32 weights alone can be consolidated with "
            f"`python {root}/zero_to_fp32.py {root} {root}/{tag}_fp32 --tag {tag}`"
        )


def load(engine, run_dir: str, tag: str) -> dict:
    """Load model, optimizer and scheduler; returns the client state saved with it."""
    _, client = engine.load_checkpoint(ckpt_root(run_dir), tag=tag)
    if client is None:
        raise RuntimeError(f"checkpoint {tag} in {ckpt_root(run_dir)} could not be loaded")
    return client
