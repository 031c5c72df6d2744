"""The regression gate: each provider's ratio to the reference against benchmarks/baselines.json.

    python -m benchmarks.guard                       # latest run of this machine's device class
    python -m benchmarks.guard --device h100 --csv benchmarks/results/results.csv
    python -m benchmarks.guard --propose 0.3 --runs 3   # floors from the last 3 runs, 30 % margin

Ratios, in one run, for the same (op, mode, shape, dtype): speed = reference ms / provider ms,
memory = reference peak MiB / provider peak MiB (higher is better for both). The reference is
`torch` (the eager reference) for the ops and `kernels_off` for `step`.

baselines.json: {device class: {op: {provider: {mode: floors}}}}, floors = {"speed": x,
"memory": y, "shapes": {shape: {"speed": ...}}} (per-shape values override); keys starting with
"_" are comments. Every floor must be met by every shape of that mode in the run; a guarded
provider that is missing or errored in a run of its op fails too (a backend that stopped being
available is a regression). Ops absent from the run are reported, not failed. Exit status: 0 all
met, 1 a floor broken (each named with op, provider, mode and shape), 2 nothing to judge.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

from benchmarks import common

BASELINES = os.path.join(common.ROOT, "benchmarks", "baselines.json")
REFERENCE = {"step": "kernels_off"}  # others: "torch"
KINDS = {"speed": "ms_median", "memory": "peak_mem_mb"}


def reference_of(op: str) -> str:
    return REFERENCE.get(op, "torch")


@dataclass
class Ratio:
    """One provider's ratios to the reference for one (op, mode, shape, dtype) of one run."""

    op: str
    provider: str
    mode: str
    shape: str
    dtype: str
    speed: float | None
    memory: float | None
    ms: str = ""
    ref_ms: str = ""


def _num(v: object) -> float | None:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ratio(ref: dict, row: dict, column: str) -> float | None:
    a, b = _num(ref.get(column)), _num(row.get(column))
    if a is None or b is None:
        return None
    if b <= 0:
        return math.inf if a > 0 else None
    return a / b


def compute_ratios(rows: list[dict]) -> list[Ratio]:
    """Ratios of every ok non-reference row to its reference row of the same run."""
    refs = {
        (r["op"], r["mode"], r["shape"], r["dtype"], r["date"]): r
        for r in rows
        if r["provider"] == reference_of(r["op"]) and r.get("status") == "ok"
    }
    out = []
    for r in rows:
        if r["provider"] == reference_of(r["op"]) or r.get("status") != "ok":
            continue
        ref = refs.get((r["op"], r["mode"], r["shape"], r["dtype"], r["date"]))
        if ref is None:
            continue
        out.append(
            Ratio(
                r["op"],
                r["provider"],
                r["mode"],
                r["shape"],
                r["dtype"],
                _ratio(ref, r, "ms_median"),
                _ratio(ref, r, "peak_mem_mb"),
                r["ms_median"],
                ref["ms_median"],
            )
        )
    return out


def floors_for(baseline: dict, op: str, provider: str, mode: str, shape: str) -> dict[str, float]:
    """{"speed": x, "memory": y} that apply to one shape (per-shape entries override)."""
    entry = baseline.get(op, {}).get(provider, {}).get(mode)
    if entry is None:
        return {}
    if isinstance(entry, (int, float)):
        return {"speed": float(entry)}
    out = {k: float(v) for k, v in entry.items() if k in KINDS}
    out.update({k: float(v) for k, v in entry.get("shapes", {}).get(shape, {}).items() if k in KINDS})
    return out


def check(rows: list[dict], baseline: dict) -> tuple[list[str], list[str]]:
    """(failures, report lines) of one run's rows against one device's baseline."""
    ratios = compute_ratios(rows)
    ran_ops = {r["op"] for r in rows}
    fails: list[str] = []
    report: list[str] = []
    for q in ratios:
        floors = floors_for(baseline, q.op, q.provider, q.mode, q.shape)
        for kind in KINDS:
            value = getattr(q, kind)
            if value is None:
                continue
            floor = floors.get(kind)
            verdict = "unguarded" if floor is None else ("ok" if value >= floor else "FAIL")
            line = (
                f"{verdict:>9}  {q.op} {q.provider} {q.mode} {q.shape} ({q.dtype}): {kind} ratio {value:.3f}"
                + ("" if floor is None else f" (floor {floor:g})")
                + (f"  [{q.provider} {q.ms} ms vs {reference_of(q.op)} {q.ref_ms} ms]" if kind == "speed" else "")
            )
            report.append(line)
            if verdict == "FAIL":
                fails.append(line.strip())
    for op, providers in baseline.items():
        if op.startswith("_") or not isinstance(providers, dict):
            continue
        if op not in ran_ops:
            report.append(f"  not run  {op}: no rows in this run")
            continue
        for provider, modes in providers.items():
            if provider.startswith("_"):
                continue
            for mode in modes:
                if mode.startswith("_"):
                    continue
                have = [r for r in rows if r["op"] == op and r["provider"] == provider and r["mode"] == mode]
                bad = [r for r in have if r.get("status") != "ok"]
                if not have or bad:
                    why = "no rows" if not have else f"{len(bad)} row(s) errored: {bad[0].get('note', '')}"
                    line = f"{op} {provider} {mode}: guarded but {why}"
                    fails.append(line)
                    report.append(f"     FAIL  {line}")
    return fails, report


def propose(rows_by_run: list[list[dict]], margin: float) -> dict:
    """Floors = the worst ratio over the given runs x (1 - margin), rounded down to 2 digits,
    for every (op, provider, mode) seen (to review and prune before committing)."""
    worst: dict[tuple[str, str, str], dict[str, float]] = {}
    for rows in rows_by_run:
        for q in compute_ratios(rows):
            w = worst.setdefault((q.op, q.provider, q.mode), {})
            for kind in KINDS:
                v = getattr(q, kind)
                if v is not None and math.isfinite(v):
                    w[kind] = min(w.get(kind, math.inf), v)
    out: dict = {}
    for (op, provider, mode), w in sorted(worst.items()):
        floors = {k: math.floor(v * (1 - margin) * 100) / 100 for k, v in w.items()}
        out.setdefault(op, {}).setdefault(provider, {})[mode] = floors
    return out


def load_baselines(path: str = BASELINES) -> dict:
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fail when a provider's ratio to the reference falls below its floor.")
    p.add_argument("--csv", default=common.RESULTS_CSV)
    p.add_argument("--baselines", default=BASELINES)
    p.add_argument("--device", default=None, help="device class (default: this machine's: cpu, h100, h200)")
    p.add_argument("--date", default=None, help="judge the run of this date (default: the latest per op)")
    p.add_argument("--propose", type=float, default=None, metavar="MARGIN", help="print proposed floors")
    p.add_argument("--runs", type=int, default=1, help="with --propose: the last N runs")
    args = p.parse_args(argv)
    if args.device is None:
        import torch

        args.device = common.device_class(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rows = [r for r in common.read_rows(args.csv) if r["device"] == args.device]
    if args.propose is not None:
        dates = sorted({r["date"] for r in rows})[-args.runs :]
        runs = [[r for r in rows if r["date"] == d] for d in dates]
        print(json.dumps({args.device: propose(runs, args.propose)}, indent=2))
        print(f"(from {len(dates)} run(s): {', '.join(dates)}; review, then edit {args.baselines})", file=sys.stderr)
        return 0
    rows = [r for r in rows if r["date"] == args.date] if args.date else common.latest_run(rows)
    if not rows:
        print(f"guard: no rows for device {args.device} in {args.csv}", file=sys.stderr)
        return 2
    baseline = load_baselines(args.baselines).get(args.device)
    if baseline is None:
        print(f"guard: {args.baselines} has no baseline for device class {args.device!r}; nothing is guarded")
        return 2
    fails, report = check(rows, baseline)
    print("\n".join(report))
    dates = sorted({r["date"] for r in rows})
    if fails:
        print(f"guard: FAIL ({len(fails)}) on {args.device}, run(s) {', '.join(dates)}:")
        print("\n".join(f"  {f}" for f in fails))
        return 1
    print(f"guard: ok on {args.device}, run(s) {', '.join(dates)}: every floor met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
