"""The demo's accuracy over seeds: one column per run, the mean and the minimum per question type.

    python -m mage_fast.apps.demo_seeds [--bar 0.95] DEMO_DIR [DEMO_DIR ...]

Each DEMO_DIR is one `make demo` output folder (`make demo-seeds` writes runs/demo-seeds/seed<N>):
its held-out metrics (answers_metrics.json, from `python -m mage_fast.apps.eval`), the world's seed
(data/world.json) and the step where stage 2 stopped (stage2/summary.json). Exit status 1 when a
question type of a run is below `--bar`, 2 when a folder lacks its metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def load_run(folder: str) -> dict:
    """-> {"name", "accuracy" (per qtype and "overall"), "n" (rows per qtype), "stopped_at"}."""
    metrics = _read(os.path.join(folder, "answers_metrics.json"))
    if metrics is None:
        raise FileNotFoundError(f"{folder}: no answers_metrics.json (run `make demo DEMO={folder}` to the end)")
    world = _read(os.path.join(folder, "data", "world.json")) or {}
    stage2 = _read(os.path.join(folder, "stage2", "summary.json")) or {}
    name = f"seed {world['seed']}" if "seed" in world else os.path.basename(os.path.normpath(folder))
    return {"name": name, "accuracy": metrics["accuracy"], "n": metrics["n"], "stopped_at": stage2.get("step")}


def table(runs: list[dict]) -> tuple[list[str], dict]:
    """The printed lines and the summary {qtype: {"mean", "min"}} over the runs; question types in
    the first run's order, "overall" last."""
    qtypes = [q for q in runs[0]["accuracy"] if q != "overall"] + ["overall"]
    head = f"{'qtype':<14}" + "".join(f"{r['name']:>10}" for r in runs) + f"{'mean':>10}{'min':>10}"
    lines, summary = [head], {}
    for q in qtypes:
        vals = [r["accuracy"].get(q, float("nan")) for r in runs]
        summary[q] = {"mean": sum(vals) / len(vals), "min": min(vals)}
        cells = "".join(f"{v:>10.3f}" for v in vals)
        lines.append(f"{q:<14}{cells}{summary[q]['mean']:>10.3f}{summary[q]['min']:>10.3f}")
    stops = "".join(f"{r['stopped_at'] if r['stopped_at'] is not None else '-':>10}" for r in runs)
    lines.append(f"{'stage-2 steps':<14}{stops}")
    return lines, summary


def below(runs: list[dict], bar: float) -> list[str]:
    """ "<run>: <qtype> <accuracy>" for every question type (not "overall") of a run under `bar`."""
    return [f"{r['name']}: {q} {v:.3f}" for r in runs for q, v in r["accuracy"].items() if q != "overall" and v < bar]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mage_fast.apps.demo_seeds", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="`make demo` output folders (DEMO=...)")
    p.add_argument("--bar", type=float, default=0.95, help="every question type of every run at least this")
    a = p.parse_args(argv)
    try:
        runs = [load_run(f) for f in a.folders]
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    lines, summary = table(runs)
    print("\n".join(lines))
    missed = below(runs, a.bar)
    verdict = "yes" if not missed else "no (" + "; ".join(missed) + ")"
    print(f"every question type >= {a.bar} in every run: {verdict}")
    print(json.dumps({"runs": runs, "summary": summary, "bar": a.bar, "met": not missed}))
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
