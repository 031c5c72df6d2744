"""Early stopping on the held-out checks (`early_stop_accuracy`), in real 2-rank ZeRO-3 launches.

A first run (early stop off) trains 2 steps and answers the held-out rows at step 2. Its answers
become the references of a second answers file, so the same run, launched again for 6 steps with
`early_stop_accuracy: 1.0` and a check every 2 steps, meets the bar at step 2 exactly (the demo's
configs are deterministic: the same steps give the same answers) and must stop there: checkpoint,
export and summary as at the end of a run, on both ranks at the same step.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pytest
from launchutil import TINY, launch, run_history, run_summary

from mage_fast.train.accuracy import converged

pytestmark = pytest.mark.slow

COMMON = [*TINY, "data.answers_limit=12", "eval_every=2", "deterministic=true", "optim.schedule=constant"]


@dataclass
class Runs:
    plain: str  # early stop off, 2 steps
    stopped: str  # early_stop_accuracy 1.0 against the plain run's own answers, max_steps 6
    stdout: str  # the stopped run's output


def _own_answers(plain: str, shapes_dir: str, out: str) -> str:
    """The held-out rows with the plain run's step-2 answers as their references -> the file's path."""
    with open(os.path.join(plain, "answers_eval.jsonl")) as f:
        said = {r["question_id"]: r["text"] for r in map(json.loads, f)}
    with open(os.path.join(shapes_dir, "eval.json")) as f:
        rows = [r for r in json.load(f) if r["id"] in said]
    for r in rows:
        r["conversations"][-1]["value"] = said[r["id"]]
    os.symlink(os.path.join(shapes_dir, "images"), os.path.join(out, "images"))
    path = os.path.join(out, "own.json")
    with open(path, "w") as f:
        json.dump(rows, f)
    return path


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory) -> Runs:
    tmp = tmp_path_factory.mktemp("early")
    plain, stopped = str(tmp / "plain"), str(tmp / "stopped")
    data = [f"data.root={shapes_dir}"]
    launch([*COMMON, *data, f"run_dir={plain}", "max_steps=2", "data.answers=eval.json", "export=false"])
    own = _own_answers(plain, shapes_dir, str(tmp))
    p = launch([*COMMON, *data, f"run_dir={stopped}", "max_steps=6", f"data.answers={own}", "early_stop_accuracy=1.0"])
    return Runs(plain, stopped, p.stdout + p.stderr)


def test_the_bar_is_every_type_not_overall():
    acc = {"colour": 1.0, "count": 0.9, "overall": 0.95}
    assert converged(acc, 0.9) and not converged(acc, 0.95)
    assert not converged(acc, 0.0)  # 0: early stop off
    assert not converged({"overall": 1.0}, 0.5)  # no question type, nothing to judge


def test_without_the_bar_a_run_goes_to_max_steps(runs):
    summary = run_summary(runs.plain)
    assert summary["step"] == 2 and summary["converged_at"] is None
    assert [p["converged"] for p in summary["accuracy"]] == [False]


def test_the_run_stops_at_the_first_check_at_the_bar(runs):
    summary = run_summary(runs.stopped)
    print(summary["accuracy"])
    assert summary["converged_at"] == 2 and summary["step"] == 2
    assert [h["step"] for h in run_history(runs.stopped)] == [1, 2]
    assert summary["accuracy"] == [
        {"step": 2, "accuracy": dict.fromkeys(summary["accuracy"][0]["accuracy"], 1.0), "converged": True}
    ]
    assert "every type >= 1.0 (early_stop_accuracy): converged, stopping early" in runs.stdout


def test_the_stopped_run_is_checkpointed_evaluated_and_exported(runs):
    assert os.path.isfile(os.path.join(runs.stopped, "checkpoints", "step00000002", "COMMITTED"))
    assert os.path.isfile(os.path.join(runs.stopped, "export", "mage_config.json"))
    assert "eval_loss" in run_summary(runs.stopped)
