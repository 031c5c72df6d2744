"""What a run refuses or skips, real 2-rank ZeRO-3 runs on CPU (gloo): non-finite steps on one
rank (skipped on all, K in a row abort), bad data rows (skipped and reported, or past a bound an
error), text-only and image batches meeting on the ranks, a stage-1 aligner frozen through stage 2,
resumes with another model config or world size, and a bad config key. Each subprocess has a
timeout, so a hang fails instead of blocking.

Fault injection (the test-only `faults:` config section, docs/survival.md): faults.nan_loss=[2]
and faults.inf_grad=[4] (NaN loss at step 2, an Inf gradient at step 4, on the last rank only;
faults.rank picks another).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from launchutil import TINY, launch, run_history, run_summary
from testutil import ROOT

sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
from _data_helpers import qa, write_truncated  # noqa: E402

NO_EVAL = ["data.eval=null", "export=false", "deterministic=true"]


def _common(run: str, data: str, ds: str) -> list[str]:
    return [f"run_dir={run}", f"data.root={data}", f"deepspeed={ds}", *TINY, *NO_EVAL]


def _single(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """One process (`python -m mage_fast.train`, a world of one) that is expected to fail."""
    return subprocess.run(
        [sys.executable, "-m", "mage_fast.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


# ---- 3: a NaN loss / Inf gradient on one rank skips the step on all; K in a row abort ----


@pytest.mark.slow
@pytest.mark.parametrize("stage", [3, 2])
def test_nonfinite_steps_are_skipped_on_all_ranks_then_abort(shapes_dir, strict_zero3, tmp_path, stage):
    # ZeRO-3 keeps the reduced gradients in one flat partition buffer; ZeRO-2 in per-parameter
    # slices (and clears every .grad): the norm and the forced skip must work on both.
    run = str(tmp_path / "run")
    ds = strict_zero3 if stage == 3 else os.path.join(ROOT, "configs/deepspeed/zero2.json")
    args = _common(run, shapes_dir, ds) + ["max_steps=8", "max_bad_steps=2"]
    faults = ["faults.nan_loss=[2,5]", "faults.inf_grad=[4]", "faults.rank=1"]
    p = launch([*args, *faults], check=False)
    assert p.returncode != 0
    assert "aborting: 2 non-finite steps in a row (steps 4-5, max_bad_steps=2)" in p.stderr
    h = {r["step"]: r for r in run_history(run)}
    assert sorted(h) == [1, 2, 3, 4, 5]
    assert h[2]["skipped"] and h[2]["nonfinite"] == "loss" and len(h[2]["ids"]) == 8  # both ranks' samples
    assert h[4]["skipped"] and h[4]["nonfinite"] == "gradient norm"  # loss finite, rank 1's grads not
    assert "skipped" not in h[1] and "skipped" not in h[3]
    # AdamW's own step count (rank 0, whose loss was finite): no update on a skipped step.
    assert [h[s]["updates"] for s in range(1, 6)] == [1, 1, 2, 2, 2]
    assert "non-finite loss at step 2" in p.stdout and f"sample ids {h[2]['ids']}" in p.stdout
    assert all(h[s]["grad_norm"] > 0 for s in (1, 3))  # the real norm of the reduced gradients, not 0


# ---- 4 + 5 + 7 + 6: stage 1 -> stage 2 over bad data with mixed batches; mismatched resumes ----


def _bad_world(shapes_dir: str, root: str) -> dict[str, list[str]]:
    """shapes stage2 rows, half made text-only, plus one broken row per reason."""
    os.makedirs(root)
    for name in ("images", "tokenizer"):
        os.symlink(os.path.join(shapes_dir, name), os.path.join(root, name))
    with open(os.path.join(shapes_dir, "stage2.json")) as f:
        rows = json.load(f)[:36]
    for r in rows[::2]:  # text-only: no image, no placeholder
        del r["image"]
        r.pop("caption", None)
        r["conversations"][0]["value"] = r["conversations"][0]["value"].replace("<image>", "").strip()
    os.makedirs(os.path.join(root, "broken"))
    write_truncated(os.path.join(root, "broken", "half.png"), "PNG")
    write_truncated(os.path.join(root, "broken", "half.jpg"), "JPEG")
    img = rows[1]["image"]
    bad = {
        "missing_image": [qa("gone", "images/nope.png")],
        "corrupt_image": [qa("trunc_png", "broken/half.png"), qa("trunc_jpg", "broken/half.jpg")],
        "placeholder_mismatch": [qa("two_ph", img, q="<image> <image> what is this")],
        "over_length": [qa("too_long", img, q="<image>\n" + "what is this " * 200)],
        "no_labels": [{"id": "no_answer", "image": img, "conversations": [{"from": "human", "value": "<image>"}]}],
    }
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(rows + [r for rs in bad.values() for r in rs], f)
    return {k: [r["id"] for r in rs] for k, rs in bad.items()}


@pytest.mark.slow
def test_stage2_from_stage1_aligner_over_bad_mixed_data(shapes_dir, strict_zero3, tmp_path):
    from safetensors.torch import load_file

    s1, s2, data = str(tmp_path / "s1"), str(tmp_path / "s2"), str(tmp_path / "data")
    launch(_common(s1, shapes_dir, strict_zero3) + ["max_steps=3", "export=true"])
    bad_ids = _bad_world(shapes_dir, data)

    # 7: the stage-1 aligner loaded into a ZeRO-3 stage-2 model (every parameter partitioned) and frozen
    # must come out of stage 2 bit for bit. 4: the bad rows are skipped and reported; 5: text-only and
    # image batches meet on the two ranks (strict ZeRO-3; the launch timeout turns a hang into a failure).
    p = launch(
        _common(s2, data, strict_zero3)
        + [
            "data.train=train.json",
            f"init_from={s1}/export",
            "freeze_aligner=true",
            "max_steps=6",
            "micro_batch_size=2",
            "export=true",
            "data.max_bad_fraction=0.5",
        ]
    )
    a1 = load_file(os.path.join(s1, "export", "aligner", "model.safetensors"))
    a2 = load_file(os.path.join(s2, "export", "aligner", "model.safetensors"))
    assert a1.keys() == a2.keys() and all(v.numel() > 0 for v in a1.values())
    for k in a1:
        assert a1[k].shape == a2[k].shape and bool((a1[k] == a2[k]).all()), k

    summ = run_summary(s2)
    assert {r: v["ids"] for r, v in summ["data_skipped"].items()} == bad_ids
    for reason, ids in bad_ids.items():
        assert f"skipped {reason}: {len(ids)}, ids {ids}" in p.stdout
    per_rank = [h["images_per_rank"] for h in summ["history"]]
    assert any(min(x) == 0 < max(x) for x in per_rank), f"no step mixed a text-only and an image batch: {per_rank}"
    assert summ["step"] == 6 and summ["nonfinite_steps"] == 0

    # 4: past max_bad_fraction the run stops before training, naming the dominant reason.
    p = _single(
        _common(str(tmp_path / "s3"), data, strict_zero3) + ["data.train=train.json", "data.max_bad_fraction=0.1"]
    )
    assert p.returncode != 0
    assert "error: DataError:" in p.stderr and "most are corrupt_image: 2" in p.stderr and "train:" not in p.stderr

    # 6: resuming stage 1 with another model config fails before training, naming module and shapes ...
    n = len(run_history(s1))
    p = _single(_common(s1, shapes_dir, strict_zero3) + ["max_steps=5", "model.llm.intermediate_size=48"])
    assert p.returncode != 0
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ResumeError: cannot resume") and "step00000003" in line
    assert "module llm.model.layers.0.mlp.down_proj" in line
    assert "shape (32, 64) in the checkpoint but shape (32, 48) in this model config" in line
    # ... and with another world size and resizing switched off says what to run. The run above
    # converted step 3 for one rank before its shapes were compared; resume_resize=false would
    # load that copy, so it goes first.
    universal = os.path.join(s1, "checkpoints", "universal")
    assert os.path.isfile(os.path.join(universal, "step00000003", "COMMITTED"))
    shutil.rmtree(universal)
    p = _single(_common(s1, shapes_dir, strict_zero3) + ["max_steps=5", "resume_resize=false"])
    assert p.returncode != 0
    line = p.stderr.strip().splitlines()[-1]
    assert "written by 2 ranks and this run has 1" in line and "deepspeed --num_gpus 2" in line
    assert "zero_to_fp32.py" in line and f"python -m mage_fast.train.convert {s1} --tag step00000003" in line
    assert len(run_history(s1)) == n  # no step was taken
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


# ---- 8: the CLI rejects a bad key in one line ----


def test_cli_rejects_bad_config_in_one_line():
    cfg = os.path.join(ROOT, "configs", "train", "demo_stage1.yaml")
    for bad, msg in (
        ("bogus=1", "unknown config key bogus"),
        ("max_steps=lots", "max_steps: expected an integer"),
        ("freeze_llm=true", None),
        ("data.root=/nowhere", "data.train: '/nowhere/stage1.json' is not a file"),
    ):
        extra = ["optim.lr_llm=1e-4"] if bad.startswith("freeze_llm") else []
        p = subprocess.run(
            [sys.executable, "-m", "mage_fast.train", "--config", cfg, bad, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("config error: "), p.stderr
        assert msg is None or msg in lines[0]
        assert msg is not None or "contradicts optim.lr_llm" in lines[0]
