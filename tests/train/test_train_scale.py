"""Real multi-rank DeepSpeed runs on CPU (gloo) for what training at scale needs: the loss is
normalised across ranks (1, 2 and 3 ranks with the same samples per step train alike), gradient
checkpointing changes nothing but memory, two loopback "nodes" train as one 2-rank node, a
checkpoint resumes on another world size (universal checkpoint) for ZeRO-3 and ZeRO-2, and a
non-finite step in bf16 leaves the weights, the LR and the scheduler untouched.

The launches are shared: `ref` (2 ranks x 6 rows, ZeRO-3, checkpoints at steps 2 and 4) is the
reference of every comparison. Every third row has no caption, so the ranks' caption counts
differ and a per-rank mean in the MSE term would not match the 1-rank run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from launchutil import TINY, launch, launch_env, launch_nodes, run_history
from testutil import ROOT, uneven_captions_world

pytestmark = pytest.mark.slow

PROBE = ["faults.probe=true"]  # lr per group, scheduler steps, weight checksum per step
STEPS = ["max_steps=5", "save_every=2", "keep_last=5", "data.eval=null", "export=false", "deterministic=true",
         "optim.schedule=constant", "optim.warmup_steps=4"]  # LR rising over steps 1-4, whatever max_steps  # fmt: skip
PART_LRS = ["optim.lr_aligner=5e-3", "optim.lr_llm=2e-3"]  # three groups, three learning rates


def run(args: list[str], ranks: int, timeout: int = 420) -> str:
    """`deepspeed --num_gpus <ranks> --module mage_fast.train` to the end (probes on); returns stdout."""
    return launch([*args, *PROBE], timeout, ranks=ranks).stdout


def history(run_dir: str) -> dict[int, dict]:
    """Step records of run_dir/history.jsonl by step (a resumed run's steps only)."""
    return {r["step"]: r for r in run_history(run_dir)}


def resumed_copy(src: str, dst: str, tag: str) -> str:
    """A new run_dir holding only checkpoint `tag` of `src` (what a job moved elsewhere finds)."""
    os.makedirs(os.path.join(dst, "checkpoints"))
    shutil.copytree(os.path.join(src, "checkpoints", tag), os.path.join(dst, "checkpoints", tag))
    return dst


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def same_steps(got: dict[int, dict], want: dict[int, dict], steps, rel: float) -> None:
    for s in steps:
        for key in ("loss", "ce", "mse", "grad_norm"):
            assert close(got[s][key], want[s][key], rel), f"step {s} {key}: {got[s][key]} vs {want[s][key]}"
        assert got[s]["lr"] == pytest.approx(want[s]["lr"], rel=1e-12), f"step {s} lr"
        assert got[s]["sched_steps"] == want[s]["sched_steps"] and got[s]["updates"] == want[s]["updates"]


@pytest.fixture(scope="module")
def cap_data(shapes_dir, tmp_path_factory) -> str:
    return uneven_captions_world(shapes_dir, tmp_path_factory.mktemp("capdata"))


@pytest.fixture(scope="module")
def common(cap_data, strict_zero3) -> list[str]:
    return [f"data.root={cap_data}", f"deepspeed={strict_zero3}", *TINY, *STEPS, *PART_LRS]


@pytest.fixture(scope="module")
def ref(common, tmp_path_factory) -> str:
    """2 ranks x 6 rows, ZeRO-3 with every parameter partitioned, 5 steps."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    run([f"run_dir={out}", *common, "micro_batch_size=6"], 2)
    return out


def test_one_and_three_ranks_train_like_two(ref, common, tmp_path):
    # The same 12 samples per step as 1 x 12, 2 x 6 and 3 x 4 rows: CE is divided by the step's
    # labelled tokens on all ranks and the MSE weighted by each rank's share of the step's
    # captioned images, so the losses and gradient norms agree whatever the split. Three ranks
    # also leave ZeRO-3 partitions uneven (parameter sizes not divisible by 3: padding).
    want = history(ref)
    for ranks, micro in ((1, 12), (3, 4)):
        out = str(tmp_path / f"r{ranks}")
        run([f"run_dir={out}", *common, f"micro_batch_size={micro}", "max_steps=3", "save_every=0"], ranks)
        got = history(out)
        print(f"{ranks} rank(s) x {micro}:", [(got[s]["loss"], got[s]["grad_norm"]) for s in (1, 2, 3)])
        assert len(got[1]["images_per_rank"]) == ranks
        same_steps(got, want, (1, 2, 3), rel=2e-5)
    assert all(want[s]["mse"] > 0 for s in want)


def test_gradient_accumulation_trains_like_one_micro_batch(ref, common, tmp_path):
    # Two micro-batches of 3 per rank accumulated must train exactly like ref's one micro-batch
    # of 6: rank r sees the same 6 samples per step either way (ResumableBatches). The CE is divided
    # by the labelled tokens of the whole step on both ranks (num_items) and each micro-batch's MSE
    # is weighted by its share of the step's captioned images; every third row has no caption, so
    # micro-batches differ in caption count and a per-micro-batch mean would not match.
    out = str(tmp_path / "accum")
    run([f"run_dir={out}", *common, "micro_batch_size=3", "grad_accum=2", "max_steps=3", "save_every=0"], 2)
    got, want = history(out), history(ref)
    print("grad_accum=2 x 3:", [(got[s]["loss"], got[s]["mse"], got[s]["grad_norm"]) for s in (1, 2, 3)])
    same_steps(got, want, (1, 2, 3), rel=2e-5)
    assert all(got[s]["mse"] > 0 for s in (1, 2, 3))


def test_two_loopback_nodes_with_gradient_checkpointing_train_like_one_node(ref, common, tmp_path):
    # Two "machines" of one rank each on loopback, as on a cluster without ssh between launches:
    # `deepspeed --hostfile H --no_ssh --node_rank R --master_addr A`, one launch per node. The
    # LLM and the tower recompute their activations in backward (non-reentrant checkpointing,
    # ZeRO-3 gathering the parameters again): per-step losses and gradient norms equal the one
    # 2-rank node's, which does not checkpoint.
    out = str(tmp_path / "run")
    args = [f"run_dir={out}", *common, "micro_batch_size=6", "max_steps=3", "save_every=0",
            "gradient_checkpointing.llm=true", "gradient_checkpointing.vision=true"]  # fmt: skip
    results = launch_nodes([[*args, *PROBE]] * 2, tmp_path / "hostfile")
    codes, text = [c for c, _ in results], [t for _, t in results]
    assert codes == [0, 0], f"node launches exited {codes}: {text[0][-2000:]}\n{text[1][-2000:]}"
    got = history(out)
    with open(os.path.join(out, "config.yaml")) as f:
        assert "llm: true" in f.read()
    print("2 nodes x 1 rank, checkpointing on:", [(got[s]["loss"], got[s]["grad_norm"]) for s in (1, 2, 3)])
    same_steps(got, history(ref), (1, 2, 3), rel=1e-6)
    # Each node's rank takes all of its machine's cores: deepspeed's LOCAL_SIZE is 1, WORLD_SIZE 2.
    for r, t in enumerate(text):
        assert f"rank {r}: " in t and "/ 1 local ranks from LOCAL_SIZE" in t, t[-2000:]


def test_zero3_resumes_on_one_rank_then_on_two(ref, common, tmp_path):
    # ref's step-2 checkpoint (2 ranks) goes on on 1 rank x 12 rows; that run's step-4 checkpoint
    # (1 rank) goes on on 2 ranks x 6. Same samples per step, so the data position, LR schedule,
    # AdamW moments and step carry over exactly when the continued losses equal ref's own.
    # 2 -> 1 converted ahead of time by the CLI (no --tag: the newest committed checkpoint) and
    # loaded with resume_resize=false; 1 -> 2 converted at the start of the run (resume_resize).
    want = history(ref)
    one = resumed_copy(ref, str(tmp_path / "one"), "step00000002")
    cli = [sys.executable, "-m", "mage_fast.train.convert", one]
    c = subprocess.run(cli, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr[-2000:]
    assert c.stdout.strip().splitlines()[-1] == os.path.join(one, "checkpoints", "universal", "step00000002")
    log = run([f"run_dir={one}", *common, "micro_batch_size=12", "max_steps=4", "resume_resize=false"], 1)
    assert "step00000002 was written by 2 ranks, this run has 1: loading its converted copy" in log
    assert "resumed from step00000002" in log and "converting" not in log
    got = history(one)
    assert sorted(got) == [3, 4]
    print("2 -> 1 rank:", [(got[s]["loss"], want[s]["loss"]) for s in (3, 4)])
    same_steps(got, want, (3, 4), rel=2e-5)

    two = resumed_copy(one, str(tmp_path / "two"), "step00000004")
    log = run([f"run_dir={two}", *common, "micro_batch_size=6"], 2)
    assert "resize: step00000004 was written by 1 ranks, this run has 2" in log
    got = history(two)
    assert sorted(got) == [5]
    print("1 -> 2 ranks:", got[5]["loss"], want[5]["loss"])
    same_steps(got, want, (5,), rel=5e-5)
    lrs = set(got[5]["lr"].values())
    assert len(got[5]["lr"]) == 3 and lrs == set(want[5]["lr"].values())


def test_zero2_bf16_skips_a_nonfinite_step_and_resumes_on_other_world_sizes(cap_data, tmp_path):
    # bf16 ZeRO-2, per-part learning rates. Step 2's loss is NaN on rank 1: the step is skipped
    # on both ranks with the fp32 weights (checksum), the LR, the scheduler and AdamW's step
    # count as they were after step 1. Then 2 -> 1 -> 2 ranks as for ZeRO-3, within bf16's rounding.
    zero2 = os.path.join(ROOT, "configs", "deepspeed", "zero2.json")
    common = [f"data.root={cap_data}", f"deepspeed={zero2}", *TINY, *STEPS, *PART_LRS, "bf16=true"]
    ref = str(tmp_path / "ref")
    log = run([f"run_dir={ref}", *common, "micro_batch_size=6", "faults.nan_loss=[2]"], 2)
    want = history(ref)
    assert want[2]["skipped"] and "non-finite loss at step 2" in log and sorted(want) == [1, 2, 3, 4, 5]
    for key in ("param_sum", "lr", "sched_steps", "updates"):
        assert want[2][key] == want[1][key], key
    assert want[3]["param_sum"] != want[2]["param_sum"] and want[3]["sched_steps"] == want[1]["sched_steps"] + 1
    assert len(set(want[3]["lr"].values())) == 3  # the per-part learning rates

    one = resumed_copy(ref, str(tmp_path / "one"), "step00000002")
    run([f"run_dir={one}", *common, "micro_batch_size=12", "max_steps=4"], 1)
    got = history(one)
    print("bf16 2 -> 1 rank:", [(got[s]["loss"], want[s]["loss"]) for s in (3, 4)])
    assert sorted(got) == [3, 4] and got[3]["updates"] == want[3]["updates"]
    assert all(close(got[s]["loss"], want[s]["loss"], 2e-2) for s in (3, 4))
    assert got[4]["lr"] == pytest.approx(want[4]["lr"], rel=1e-9)

    two = resumed_copy(one, str(tmp_path / "two"), "step00000004")
    run([f"run_dir={two}", *common, "micro_batch_size=6"], 2)
    got = history(two)
    print("bf16 1 -> 2 ranks:", got[5]["loss"], want[5]["loss"])
    assert sorted(got) == [5] and close(got[5]["loss"], want[5]["loss"], 2e-2)
    assert got[5]["lr"] == pytest.approx(want[5]["lr"], rel=1e-9) and got[5]["updates"] == want[5]["updates"]


def test_zero3_offload_trains_like_the_gpu_resident_optimizer(ref, common, strict_zero3, tmp_path):
    # ZeRO-Offload: optimizer state and step on the CPU (DeepSpeed's CPU Adam, adamw_mode) and the
    # ZeRO-3 parameters offloaded too; the same AdamW math as torch's, per-part learning rates kept.
    with open(os.path.join(ROOT, "configs", "deepspeed", "zero3_offload.json")) as f:
        ds = json.load(f)
    with open(strict_zero3) as f:
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = json.load(f)["zero_optimization"][
            "stage3_param_persistence_threshold"
        ]
    path = tmp_path / "offload.json"
    path.write_text(json.dumps(ds))
    out = str(tmp_path / "run")
    log = run([f"run_dir={out}", *common, f"deepspeed={path}", "micro_batch_size=6", "max_steps=3", "save_every=0"], 2)
    assert "optimizer: DeepSpeedCPUAdam, learning rates vision_tower 0.003, aligner 0.005, llm 0.002" in log
    got, want = history(out), history(ref)
    print("offload:", [(got[s]["loss"], want[s]["loss"]) for s in (1, 2, 3)])
    same_steps(got, want, (1,), rel=1e-6)  # before any update: the same forward and backward
    same_steps(got, want, (2, 3), rel=1e-4)
