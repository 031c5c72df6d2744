"""Real 2-rank DeepSpeed ZeRO-3 runs on CPU (gloo), launched with the `deepspeed` launcher.

Every parameter is partitioned (persistence threshold 0), so the fused loss must see the
gathered lm_head weight. One run trains and saves; a second launch builds a new engine, loads
the checkpoint and must give the same eval loss.
"""

from __future__ import annotations

import json
import os
import pathlib
from dataclasses import dataclass

import pytest
from launchutil import TINY, launch, run_summary
from testutil import DS_PORTS

from mage_fast.train.dist import shm_buffers

pytestmark = pytest.mark.slow


@dataclass
class TrainedRun:
    """One 40-step run (held-out accuracy at steps 20 and 40), then a second launch that resumes
    its final checkpoint with no steps left; every property below reads these two."""

    run: str
    first: dict  # summary.json of the training launch
    second: dict  # summary.json of the reload launch
    reload_stdout: str
    shm_left: list[str]  # DeepSpeed's /dev/shm segments of the training launch, after it ended
    rows: list[dict]  # the 21 held-out rows the accuracy eval used
    data_root: str
    tmp: pathlib.Path


@pytest.fixture(scope="module")
def trained(shapes_dir, strict_zero3, tmp_path_factory) -> TrainedRun:
    tmp = tmp_path_factory.mktemp("zero3")
    run = str(tmp / "run")
    common = [f"run_dir={run}", f"data.root={shapes_dir}", f"deepspeed={strict_zero3}", *TINY]
    # The held-out accuracy eval runs with both ranks generating (21 rows: uneven shares, padded).
    launch(common + ["max_steps=40", "data.answers=eval.json", "data.answers_limit=21", "eval_every=20"])
    shm_left = shm_buffers(DS_PORTS[-1])
    first = run_summary(run)
    p = launch(common + ["max_steps=40", "export=false"])  # a new engine in new processes
    with open(os.path.join(shapes_dir, "eval.json")) as f:
        rows = json.load(f)[:21]
    second = run_summary(run)
    return TrainedRun(run, first, second, p.stdout, shm_left, rows, shapes_dir, tmp)


def test_two_ranks_train_and_the_loss_falls(trained):
    assert trained.first["world_size"] == 2
    losses = [h["ce"] for h in trained.first["history"]]
    head, tail = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    print(f"ce first 5 steps {head:.4f}, last 5 {tail:.4f}")
    assert tail < 0.6 * head, f"loss did not fall: {head:.4f} -> {tail:.4f}"


def test_a_finished_launch_leaves_no_shared_memory_segments(trained):
    assert trained.shm_left == [], f"DeepSpeed's all-reduce segments left in /dev/shm: {trained.shm_left}"


def test_final_checkpoint_is_committed_and_export_written(trained):
    assert os.path.isfile(os.path.join(trained.run, "checkpoints", "step00000040", "COMMITTED"))
    assert os.path.isfile(os.path.join(trained.run, "export", "mage_config.json"))


def test_reloaded_engine_gives_the_same_eval_loss(trained):
    first, second = trained.first, trained.second
    assert "resumed from step00000040" in trained.reload_stdout
    assert second["history"] == []  # no steps left
    print(f"eval loss saved run {first['eval_loss']:.6f}, reloaded {second['eval_loss']:.6f}")
    assert abs(first["eval_loss"] - second["eval_loss"]) < 1e-5


def test_export_loads_outside_deepspeed(trained):
    from mage_fast.export.pretrained import load_pretrained

    model, tok = load_pretrained(os.path.join(trained.run, "export"))
    assert model.num_image_tokens == 4 and tok.convert_tokens_to_ids("<image>") == model.image_token_id


@pytest.fixture(scope="module")
def cli_eval(trained) -> dict:
    """The single-process eval CLI on the same 21 rows, from the export."""
    from mage_fast.apps.eval import evaluate

    sub = trained.tmp / "sub.json"
    sub.write_text(json.dumps(trained.rows))
    export, out = os.path.join(trained.run, "export"), str(trained.tmp / "cli.jsonl")
    return evaluate(export, str(sub), out, max_new_tokens=8, image_root=trained.data_root)


def test_accuracy_curve_at_eval_every(trained):
    assert [a["step"] for a in trained.first["accuracy"]] == [20, 40]
    with open(os.path.join(trained.run, "accuracy.jsonl")) as f:
        assert [json.loads(line) for line in f] == trained.first["accuracy"]


def test_distributed_accuracy_equals_the_eval_cli(trained, cli_eval):
    assert sum(cli_eval["n"].values()) == 21
    assert trained.first["accuracy"][-1]["accuracy"] == cli_eval["accuracy"]
    texts = {}
    for name, path in (("train", os.path.join(trained.run, "answers_eval.jsonl")), ("cli", trained.tmp / "cli.jsonl")):
        with open(path) as f:
            texts[name] = [(r["question_id"], r["text"]) for r in map(json.loads, f)]
    print("answers at step 40:", texts["cli"][:4])
    assert texts["train"] == texts["cli"]
    assert any(t for _, t in texts["cli"])  # it answered something


def test_export_carries_the_training_pixel_transform(trained):
    from mage_fast.export.pretrained import image_transform

    assert os.path.isfile(os.path.join(trained.run, "export", "vision_tower", "preprocessor_config.json"))
    t = image_transform(os.path.join(trained.run, "export"), 999)
    assert (t.size, t.mean) == (48, (0.48145466, 0.4578275, 0.40821073))


def test_chat_answers_as_the_eval_cli(trained):
    """The chat CLI answers one row exactly as the eval CLI does on a one-row file (same greedy path)."""
    import contextlib
    import io

    from mage_fast.apps import chat
    from mage_fast.apps.eval import evaluate

    export, row, root = os.path.join(trained.run, "export"), trained.rows[3], trained.data_root
    one = trained.tmp / "one.json"
    one.write_text(json.dumps([row]))
    evaluate(export, str(one), str(trained.tmp / "one.jsonl"), max_new_tokens=8, image_root=root)
    want = json.loads((trained.tmp / "one.jsonl").read_text().splitlines()[0])["text"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        chat.main(
            [
                "--model",
                export,
                "--image",
                os.path.join(root, row["image"]),
                "--max-new-tokens",
                "8",
                row["conversations"][0]["value"],
            ]
        )
    print(f"chat: {row['conversations'][0]['value']!r} -> {buf.getvalue().strip()!r} (eval: {want!r})")
    assert buf.getvalue().strip() == want


def test_bf16_training_runs_and_learns(shapes_dir, strict_zero3, tmp_path):
    run = str(tmp_path / "run")
    p = launch(
        [
            f"run_dir={run}",
            f"data.root={shapes_dir}",
            f"deepspeed={strict_zero3}",
            *TINY,
            "bf16=true",
            "max_steps=30",
            "export=false",
            "data.eval=null",
        ]
    )
    s = run_summary(run)
    with open(os.path.join(run, "config.yaml")) as f:
        assert "bf16: true" in f.read()
    ce = [h["ce"] for h in s["history"]]
    print(f"bf16 ce first 5 {sum(ce[:5]) / 5:.4f}, last 5 {sum(ce[-5:]) / 5:.4f}")
    assert s["nonfinite_steps"] == 0 and "step skipped on all ranks" not in p.stdout
    assert sum(ce[-5:]) < 0.7 * sum(ce[:5])
