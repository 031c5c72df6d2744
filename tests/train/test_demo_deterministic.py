"""`make demo` is deterministic for a given commit: its pipeline (configs/train/demo_stage1.yaml,
then demo_stage2.yaml from stage 1's export, then `python -m mage_fast.apps.eval` on stage 2's
export), shortened to 3 steps on the tests' small shapes world, run twice gives the same
losses in both stages, the same in-training answers and the same eval answers, bit for bit.
Real 2-rank launches, as `make demo` runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from launchutil import launch, launch_env, run_history
from testutil import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # four launches of the demo model in the first test

SHORT = ["max_steps=3", "micro_batch_size=4", "log_every=1", "data.answers_limit=8", "optim.warmup_steps=2"]


def demo(out: str, data: str) -> str:
    """The demo's two stages and its eval, shortened; returns `out`."""
    cfg = os.path.join(ROOT, "configs", "train")
    for stage, extra in (("stage1", []), ("stage2", [f"init_from={out}/stage1/export"])):
        args = ["--config", f"{cfg}/demo_{stage}.yaml", f"run_dir={out}/{stage}", f"data.root={data}", *SHORT, *extra]
        launch(args, timeout=900)  # the demo's model, larger than the other tests' tiny one
    model, rows, answers = f"{out}/stage2/export", f"{data}/eval.json", f"{out}/answers.jsonl"
    cmd = [sys.executable, "-m", "mage_fast.apps.eval", "--model", model, "--data", rows, "--out", answers]
    p = subprocess.run(cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def runs(shapes_dir, tmp_path_factory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("demo")
    return demo(str(tmp / "a"), shapes_dir), demo(str(tmp / "b"), shapes_dir)


def _lines(path: str, drop: tuple[str, ...] = ()) -> list[dict]:
    """JSON lines of a file, without the keys in `drop` (paths and times differ between runs)."""
    with open(path) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


def test_the_demo_configs_ask_for_determinism(runs):
    for stage in ("stage1", "stage2"):
        with open(os.path.join(runs[0], stage, "config.yaml")) as f:
            assert "deterministic: true" in f.read()


def test_two_runs_give_the_same_losses(runs):
    a, b = runs
    for stage in ("stage1", "stage2"):
        got = [(h["step"], h["loss"], h["ce"], h["mse"], h["grad_norm"]) for h in run_history(f"{a}/{stage}")]
        want = [(h["step"], h["loss"], h["ce"], h["mse"], h["grad_norm"]) for h in run_history(f"{b}/{stage}")]
        print(stage, got)
        assert [s for s, *_ in got] == [1, 2, 3] and got == want


def test_two_runs_give_the_same_answers(runs):
    a, b = runs
    assert _lines(f"{a}/stage2/answers_eval.jsonl") == _lines(f"{b}/stage2/answers_eval.jsonl")
    assert _lines(f"{a}/stage2/accuracy.jsonl") == _lines(f"{b}/stage2/accuracy.jsonl")
    answers = _lines(f"{a}/answers.jsonl", drop=("model_id",))
    assert answers and answers == _lines(f"{b}/answers.jsonl", drop=("model_id",))
