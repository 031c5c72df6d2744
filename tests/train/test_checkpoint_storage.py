"""Which rank checks which checkpoint file, on shared and node-local storage, on synthetic
checkpoint folders (no DeepSpeed: the files are random bytes with their markers). The real
two-node runs are in test_train_node_local.py."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from mage_fast.train import checkpoint, ckpt_storage
from mage_fast.train.checkpoint import Storage

TAG = "step00000004"


def _model(rank: int) -> str:
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"


def _commit(run: str, ranks: list[int], world: int, marker: str, extra: tuple[str, ...] = ()) -> str:
    """A checkpoint folder of `run` with the files of `ranks` (+ `extra` shared files) and `marker` listing them."""
    folder = os.path.join(checkpoint.ckpt_root(run), TAG)
    os.makedirs(folder, exist_ok=True)
    names = [_model(r) for r in ranks] + list(extra)
    for name in names:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(os.urandom(96))
    with open(os.path.join(folder, checkpoint.META), "w") as f:
        json.dump({"step": 4, "world_size": world, "shapes": {}}, f)
    files = {n: checkpoint.file_record(os.path.join(folder, n)) for n in [*names, checkpoint.META]}
    with open(os.path.join(folder, marker), "w") as f:
        json.dump({"step": 4, "time": time.time(), "world": world, "ranks": ranks, "files": files}, f)
    return folder


def _node(rank: int) -> Storage:
    """Rank `rank` of two single-rank machines with node-local storage."""
    return Storage(rank=rank, world=2, local_rank=0, node_ranks=(rank,))


def test_storage_names_the_writer_and_its_marker():
    assert Storage(0, 4).writer and not Storage(1, 4).writer and Storage(0, 4).marker == "COMMITTED"
    node = Storage(rank=5, world=8, local_rank=1, node_ranks=(4, 5, 6, 7))
    assert not node.writer and node.marker == "COMMITTED.rank4" and node.ranks_to_check(8) == [5]
    assert Storage(0, 1).ranks_to_check(2) == [0, 1]  # a resize onto one rank checks every saved rank
    assert ckpt_storage.is_marker("COMMITTED.rank12") and not ckpt_storage.is_marker("COMMITTED.tmp")


def test_each_node_checks_its_own_folder(tmp_path):
    n0, n1 = str(tmp_path / "node0"), str(tmp_path / "node1")
    f0 = _commit(n0, [0], 2, "COMMITTED.rank0", extra=("zero_to_fp32.py",))
    f1 = _commit(n1, [1], 2, "COMMITTED.rank1")
    assert checkpoint.verdict(f0, _node(0)) is None and checkpoint.verdict(f1, _node(1)) is None
    assert checkpoint.complete_tags(n1) == [TAG] and checkpoint.newest(n1) == TAG
    # One node's folder holds only its ranks: fine to resume from, not to convert.
    assert checkpoint.check_files(f1) is None
    assert "covers the files of ranks [0]" in checkpoint.incomplete(f1)
    assert "covers the files of ranks [1]" in checkpoint.incomplete(f0)
    # Node 0's folder on node 1's disk: no marker there covers rank 1.
    kind, what = checkpoint.verdict(f0, _node(1))
    assert kind == "missing" and "covers rank 1" in what


def test_a_node_without_the_checkpoint_or_with_a_damaged_file(tmp_path):
    f1 = _commit(str(tmp_path / "node1"), [1], 2, "COMMITTED.rank1")
    os.remove(os.path.join(f1, "COMMITTED.rank1"))
    assert checkpoint.verdict(f1, _node(1))[0] == "missing" and checkpoint.tags(str(tmp_path / "node1"), False) == [TAG]
    f1 = _commit(str(tmp_path / "other1"), [1], 2, "COMMITTED.rank1")
    with open(os.path.join(f1, _model(1)), "r+b") as f:
        f.truncate(10)
    assert checkpoint.verdict(f1, _node(1)) == ("damaged", f"{_model(1)} has 10 bytes, 96 recorded")
    assert checkpoint.verdict(str(tmp_path / "nowhere" / TAG), _node(1))[0] == "missing"


def test_merged_node_folders_resume_on_shared_storage_and_on_other_world_sizes(tmp_path):
    f0 = _commit(str(tmp_path / "node0"), [0], 2, "COMMITTED.rank0")
    f1 = _commit(str(tmp_path / "node1"), [1], 2, "COMMITTED.rank1")
    merged = os.path.join(str(tmp_path / "merged"), "checkpoints", TAG)
    shutil.copytree(f0, merged)
    shutil.copytree(f1, merged, dirs_exist_ok=True)  # the meta file is the same on both nodes
    assert checkpoint.incomplete(merged) is None and checkpoint.check_files(merged) is None
    assert checkpoint.verdict(merged, Storage(0, 2)) is None and checkpoint.verdict(merged, Storage(1, 2)) is None
    assert checkpoint.verdict(merged, Storage(0, 1)) is None  # one rank checks both ranks' files
    with open(os.path.join(merged, _model(1)), "r+b") as f:
        f.write(b"\0" * 8)
    assert checkpoint.verdict(merged, Storage(0, 1))[0] == "damaged"
    # Node-local storage on another world size: refused, saying what to do.
    kind, what = checkpoint.verdict(f0, Storage(rank=0, world=1, local_rank=0, node_ranks=(0,)))
    assert kind == "resize" and "use_node_local_storage=false" in what


def test_resume_tag_takes_the_newest_intact_one_and_refuses_in_one_line(tmp_path):
    run = str(tmp_path / "run")
    folder = _commit(run, [0], 1, "COMMITTED")
    assert checkpoint.resume_tag(run, Storage()) == TAG
    with open(os.path.join(folder, _model(0)), "ab") as f:
        f.write(b"x")
    with pytest.raises(checkpoint.ResumeError, match=f"{TAG}: {_model(0)} has 97 bytes, 96 recorded \\(rank 0\\)"):
        checkpoint.resume_tag(run, Storage())
    assert os.listdir(checkpoint.ckpt_root(run)) == [TAG + checkpoint.DAMAGED]


def test_a_converted_copy_counts_only_for_the_save_it_came_from(tmp_path):
    from mage_fast.train import convert

    run = str(tmp_path / "run")
    folder = _commit(run, [0, 1], 2, "COMMITTED")
    out = os.path.join(convert.universal_root(run), TAG)
    os.makedirs(out)
    with open(os.path.join(out, checkpoint.MARKER), "w") as f:
        json.dump({"step": 4, "source": convert._source(run, TAG)}, f)
    assert convert.is_converted(run, TAG)
    _commit(run, [0, 1], 2, "COMMITTED")  # the same step saved again (a run started over)
    assert not convert.is_converted(run, TAG) and os.path.isdir(folder)
