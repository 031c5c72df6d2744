"""Node-local checkpoints on two loopback "machines" whose run folders are different directories
(each node's launch gets its own run_dir, as each machine has its own disk): every node commits
its own ranks' files with its own marker, a kill mid-save and a resume on the same nodes, a
resume after the folders were copied to other nodes while one node lacks the newest checkpoint
(the ranks agree on the older one), a merge of both nodes' folders resumed on one 2-rank node,
and a refusal in one line when a node has no checkpoint at all. Real 2-rank ZeRO-3 runs (gloo).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from launchutil import TINY, launch, launch_nodes, run_history
from testutil import ROOT

from mage_fast.train.checkpoint import complete_tags

pytestmark = pytest.mark.slow

STEPS = ["max_steps=6", "save_every=2", "keep_last=3", "data.eval=null", "export=false", "deterministic=true"]


@pytest.fixture(scope="module")
def node_local(strict_zero3, tmp_path_factory) -> str:
    """The strict ZeRO-3 config with `checkpoint.use_node_local_storage`."""
    with open(strict_zero3) as f:
        ds = json.load(f)
    ds["checkpoint"] = {"use_node_local_storage": True}
    path = tmp_path_factory.mktemp("ds_local") / "zero3_node_local.json"
    path.write_text(json.dumps(ds))
    return str(path)


@pytest.fixture(scope="module")
def common(shapes_dir, node_local) -> list[str]:
    return [f"data.root={shapes_dir}", f"deepspeed={node_local}", *TINY, *STEPS]


def nodes(dirs: list, common: list[str], tmp) -> list[tuple[int, str]]:
    """One launch per node, node r writing into dirs[r]."""
    return launch_nodes([[f"run_dir={d}", *common] for d in dirs], tmp / "hostfile")


def by_step(run: str) -> dict[int, dict]:
    return {h["step"]: h for h in run_history(run)}


def same_losses(got: dict[int, dict], want: dict[int, dict], steps) -> None:
    for s in steps:
        assert (got[s]["loss"], got[s]["ce"], got[s]["mse"]) == (want[s]["loss"], want[s]["ce"], want[s]["mse"]), s


def markers(run: str, tag: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(run, "checkpoints", tag)) if n.startswith("COMMITTED"))


@pytest.fixture(scope="module")
def ref(common, tmp_path_factory) -> tuple[list[str], dict[int, dict]]:
    """An uninterrupted 6-step run on the two nodes, saving at 2, 4, 6; its folders and steps."""
    tmp = tmp_path_factory.mktemp("ref")
    dirs = [str(tmp / f"node{r}") for r in (0, 1)]
    for code, out in nodes(dirs, common, tmp):
        assert code == 0, out[-3000:]
    want = by_step(dirs[0])
    assert sorted(want) == list(range(1, 7))
    return dirs, want


def test_each_node_commits_its_own_files(ref):
    (n0, n1), _ = ref
    for r, d in enumerate((n0, n1)):
        assert complete_tags(d) == ["step00000002", "step00000004", "step00000006"]
        assert markers(d, "step00000006") == [f"COMMITTED.rank{r}"]
        names = os.listdir(os.path.join(d, "checkpoints", "step00000006"))
        assert any(f"zero_pp_rank_{r}_" in n for n in names) and not any(f"zero_pp_rank_{1 - r}_" in n for n in names)
        v = subprocess.run(
            [sys.executable, "-m", "mage_fast.train.verify", d], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert v.returncode == 0 and f"step00000006: ok (no marker covers the files of ranks [{1 - r}]" in v.stdout
    assert not os.path.exists(os.path.join(n1, "history.jsonl"))  # rank 0's outputs stay on node 0


def test_kill_resume_on_the_same_nodes_then_on_other_nodes(ref, common, tmp_path):
    _, want = ref
    n = [str(tmp_path / f"n{r}") for r in (0, 1)]
    # Every rank SIGKILLs itself while step 4 is saved: no node has committed it.
    for code, _ in nodes(n, [*common, "faults.kill_in_save=4"], tmp_path):
        assert code != 0
    assert complete_tags(n[0]) == complete_tags(n[1]) == ["step00000002"]

    # Resume on the same nodes: the partial step 4 is removed on each node, steps 3-6 as uninterrupted.
    before = len(run_history(n[0]))
    (c0, out0), (c1, out1) = nodes(n, common, tmp_path)
    assert (c0, c1) == (0, 0), out0[-2000:] + out1[-2000:]
    assert "resumed from step00000002" in out0 and "removed incomplete checkpoint step00000004 on rank 1" in out1
    same_losses({h["step"]: h for h in run_history(n[0])[before:]}, want, range(3, 7))

    # The folders copied to two other nodes, where node 1's copy lacks step 6's marker (its node
    # never committed it): both ranks take step 4 and train steps 5 and 6 as the reference did.
    m = [str(tmp_path / f"m{r}") for r in (0, 1)]
    for src, dst in zip(n, m):
        shutil.copytree(src, dst)
    os.remove(os.path.join(m[1], "checkpoints", "step00000006", "COMMITTED.rank1"))
    before = len(run_history(m[0]))
    (c0, out0), (c1, out1) = nodes(m, common, tmp_path)
    assert (c0, c1) == (0, 0), out0[-2000:] + out1[-2000:]
    assert "checkpoint step00000006 is not committed on every rank (rank 1: no COMMITTED marker" in out0
    assert "resumed from step00000004" in out0
    got = {h["step"]: h for h in run_history(m[0])[before:]}
    assert sorted(got) == [5, 6]
    same_losses(got, want, (5, 6))


def test_merged_folders_resume_on_one_node_and_a_node_without_checkpoints_refuses(ref, common, strict_zero3, tmp_path):
    (n0, n1), want = ref
    # Both nodes' step-4 folders copied into one, resumed by one 2-rank node on shared storage.
    merged = tmp_path / "merged"
    for src in (n0, n1):
        shutil.copytree(
            os.path.join(src, "checkpoints", "step00000004"),
            merged / "checkpoints" / "step00000004",
            dirs_exist_ok=True,
        )
    assert markers(str(merged), "step00000004") == ["COMMITTED.rank0", "COMMITTED.rank1"]
    p = launch([f"run_dir={merged}", *common, f"deepspeed={strict_zero3}"])
    assert "resumed from step00000004" in p.stdout
    got = by_step(str(merged))
    assert sorted(got) == [5, 6]
    for s in (5, 6):  # one node's all-reduce instead of two nodes': the same to rounding
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], rel=1e-6)

    # Node 1's disk has no checkpoint at all: every rank refuses in one line, none starts over.
    e0, e1 = tmp_path / "e0", tmp_path / "e1"
    shutil.copytree(n0, e0)
    results = nodes([e0, e1], common, tmp_path)
    for code, out in results:
        assert code != 0 and "error: ResumeError: no intact checkpoint in" in out, out[-2000:]
    assert "Node-local storage: each machine resumes from its own disk" in results[1][1]
    assert not os.path.exists(os.path.join(e1, "history.jsonl")) and len(run_history(str(e0))) == len(run_history(n0))
