"""Packing in real 2-rank ZeRO-3 runs on CPU (gloo): a packed, length-grouped run trains like the
same run unpacked, a run killed while saving resumes with the uninterrupted run's losses exactly,
and its checkpoint resumes on one rank (2 -> 1 resize) with the same losses.

One reference launch (`ref`: 2 ranks x 6 rows packed into rows of at most 64 tokens, grouped by
length, checkpoints at steps 2 and 4) is shared by every comparison. Every third row has no
caption, so micro-batches differ in captioned images (the MSE's share must survive packing).
"""

from __future__ import annotations

import pytest
from launchutil import TINY, assert_same_steps, history_by_step, launch, resume_on_one_rank, run_history
from testutil import uneven_captions_world

from mage_fast.train.checkpoint import complete_tags

pytestmark = pytest.mark.slow

STEPS = ["max_steps=5", "save_every=2", "keep_last=5", "data.eval=null", "export=false", "deterministic=true"]
PACKED = ["data.packing=true", "data.group_by_length=true", "data.max_length=64"]


@pytest.fixture(scope="module")
def common(shapes_dir, strict_zero3, tmp_path_factory) -> list[str]:
    data = uneven_captions_world(shapes_dir, tmp_path_factory.mktemp("packdata"))
    return [f"data.root={data}", f"deepspeed={strict_zero3}", *TINY, *STEPS, "micro_batch_size=6"]


@pytest.fixture(scope="module")
def ref(common, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("packref") / "run")
    launch([f"run_dir={out}", *common, *PACKED])
    return out


def test_packed_run_trains(ref):
    got = history_by_step(ref)
    assert sorted(got) == [1, 2, 3, 4, 5]
    assert all(h["mse"] > 0 and not h.get("skipped") for h in got.values())
    assert got[5]["loss"] < got[1]["loss"]
    assert complete_tags(ref) == ["step00000002", "step00000004", "step00000005"]


def test_packed_run_equals_unpacked_run(ref, common, tmp_path):
    """The same samples per step, unpacked (but grouped, so the order is the same): the same
    losses and gradient norms up to fp32 rounding."""
    out = str(tmp_path / "unpacked")
    launch([f"run_dir={out}", *common, "data.group_by_length=true", "data.max_length=64", "max_steps=3"])
    got, want = history_by_step(out), history_by_step(ref)
    print("unpacked vs packed:", [(got[s]["loss"], want[s]["loss"]) for s in (1, 2, 3)])
    assert_same_steps(got, want, [1, 2, 3], rel=2e-5)


def test_killed_while_saving_resumes_exactly(ref, common, tmp_path):
    """Every rank SIGKILLs itself while saving step 4 (no commit marker); the resumed run goes on
    from step 2 with the uninterrupted run's losses bit for bit."""
    out = str(tmp_path / "killed")
    args = [f"run_dir={out}", *common, *PACKED]
    p = launch([*args, "faults.kill_in_save=4"], check=False)
    assert p.returncode != 0 and complete_tags(out) == ["step00000002"]
    log = launch(args).stdout
    assert "resumed from step00000002" in log
    got, want = run_history(out), history_by_step(ref)
    assert [h["step"] for h in got] == [1, 2, 3, 4, 3, 4, 5]  # killed after 4, resumed from 2
    for h in got:
        w = want[h["step"]]
        assert (h["loss"], h["ce"], h["mse"]) == (w["loss"], w["ce"], w["mse"]), f"step {h['step']}"


def test_resumes_on_one_rank(ref, common, tmp_path):
    """ref's step-2 checkpoint on 1 rank x 6 rows x 2 accumulated micro-batches: the same grouped
    micro-batches per step (grouping is per micro-batch, not per world size), packed on one rank."""
    resume_on_one_rank(
        ref, str(tmp_path / "one"), [*common, *PACKED, "grad_accum=2", "max_steps=4"], "step00000002", [3, 4]
    )
