"""`make demo SEED=n` seeds the world and both stages; `make demo-seeds` runs the demo per seed
and `python -m mage_fast.apps.demo_seeds` tabulates the runs (mean, minimum, the bar) from their files.
The Makefile is checked on `make -n` (the commands printed, not run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from testutil import ROOT, make_dry_run

from mage_fast.apps.demo_seeds import main

STAMP = os.path.join(".venv", ".mage-fast-installed")


def dry_run(*args: str) -> list[str]:
    return make_dry_run("-o", STAMP, *args)


def test_seed_reaches_the_world_and_both_stages():
    lines = dry_run("demo", "SEED=7", "DEMO=/tmp/d7")
    world = [x for x in lines if "mage_fast.shapes.scenes" in x]
    stages = [x for x in lines if "mage_fast.train" in x]
    assert len(world) == 1 and "--seed 7" in world[0] and "--out /tmp/d7/data" in world[0]
    assert len(stages) == 2 and all(" seed=7" in x for x in stages)
    assert all(" seed=0" in x for x in dry_run("demo") if "mage_fast.train" in x)  # the default


def test_demo_world_has_the_contrast_images_and_where_rows_unless_asked_not_to():
    def world(*args: str) -> str:
        return next(x for x in dry_run("demo", *args) if "mage_fast.shapes.scenes" in x)

    assert world().endswith(" --contrast 1500 --wheres")  # the recipe's default (docs/demo.md)
    assert world("CONTRAST=0").endswith(" --contrast 0 --wheres")
    assert world("WHERES=0").endswith(" --contrast 1500")


def test_demo_seeds_runs_each_seed_then_the_table():
    lines = dry_run("demo-seeds", "SEEDS=4 5", "DEMO_SEEDS=/tmp/ds", "DEMO_BAR=0.9")
    for s in (4, 5):
        assert any(f"--seed {s}" in x and f"/tmp/ds/seed{s}/data" in x for x in lines)
        assert sum(f" seed={s}" in x for x in lines) == 2
    assert lines[-1].endswith("-m mage_fast.apps.demo_seeds --bar 0.9 /tmp/ds/seed4 /tmp/ds/seed5")


def _run(folder, seed: int, acc: dict[str, float], steps: int) -> str:
    """A demo output folder as `make demo` leaves it: metrics, world.json and stage 2's summary."""
    for sub in ("data", "stage2"):
        os.makedirs(folder / sub)
    (folder / "answers_metrics.json").write_text(json.dumps({"accuracy": acc, "n": dict.fromkeys(acc, 300)}))
    (folder / "data" / "world.json").write_text(json.dumps({"seed": seed}))
    (folder / "stage2" / "summary.json").write_text(json.dumps({"step": steps}))
    return str(folder)


def test_the_table_gives_mean_min_and_the_verdict(tmp_path, capsys):
    a = _run(tmp_path / "a", 0, {"colour": 1.0, "shape": 0.96, "overall": 0.98}, 700)
    b = _run(tmp_path / "b", 1, {"colour": 0.98, "shape": 0.94, "overall": 0.96}, 900)
    assert main(["--bar", "0.95", a, b]) == 1  # seed 1's shape is under the bar
    out = capsys.readouterr().out
    assert "seed 1: shape 0.940" in out and "every question type >= 0.95 in every run: no" in out
    got = json.loads(out.strip().splitlines()[-1])
    assert got["summary"]["shape"]["min"] == 0.94 and abs(got["summary"]["colour"]["mean"] - 0.99) < 1e-12
    assert [r["stopped_at"] for r in got["runs"]] == [700, 900]
    assert main(["--bar", "0.9", a, b]) == 0
    assert "in every run: yes" in capsys.readouterr().out


def test_a_folder_without_metrics_is_named(tmp_path):
    p = subprocess.run([sys.executable, "-m", "mage_fast.apps.demo_seeds", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert p.returncode == 2 and f"{tmp_path}: no answers_metrics.json" in p.stderr
