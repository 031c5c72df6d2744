"""Last step of `make gpu-check`: from this run's CSV rows and float64 checks, the winner per op
among mage-fast's own backends on this device's class, written with the summary into $OUT.

    python -m benchmarks.gpu_winners --csv ROWS.csv --checks checks.jsonl --steps steps.tsv \\
        --out OUT --device cuda

A backend is a candidate only when it passed benchmarks/gpu_validate.py (float64 reference at a
production shape) in this run and all its benchmark rows are `ok`. The winner has the lowest
summed `full`-mode median over the op's shapes; `torch` wins ties. $OUT/validated.json is the
checked-in mage_fast/ops/validated.json with this class's winners replaced (copy it back to make
`backend="auto"` use them); $OUT/results.csv is this run's rows; $OUT/summary.txt the plain
summary: steps, checks, winners, and each provider's time and peak memory against the run's
measured matmul peak and against the fastest provider of its shape; whole training steps
(bench_lora's full / LoRA / QLoRA rows) in a list of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections import defaultdict

import torch

from benchmarks import common
from benchmarks.opbench import OP_PROVIDERS
from mage_fast.ops import VALIDATED_PATH, device_class

OURS = OP_PROVIDERS
STEP_OPS = ("step", "lora_step")  # whole-step rows (bench_step, bench_lora): listed apart, never op winners


def passed_checks(path: str, cls: str) -> dict[tuple[str, str], bool]:
    """(op, backend) -> passed, from gpu_validate's JSON lines of device class `cls`."""
    out: dict[tuple[str, str], bool] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "passed" in r and r["device"] == cls:
                out[(r["op"], r["backend"])] = out.get((r["op"], r["backend"]), True) and bool(r["passed"])
    return out


def winners(rows: list[dict], checked: dict[tuple[str, str], bool]) -> dict[str, tuple[str, dict[str, float]]]:
    """op -> (winning backend, backend -> summed full-mode ms) over `rows`, among the backends
    that passed their checks and have no errored row."""
    total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    broken: set[tuple[str, str]] = set()
    for r in rows:
        if r.get("provider") not in OURS:
            continue
        key = (r["op"], OURS[r["provider"]])
        if r.get("status") != "ok" or not checked.get(key, False):
            broken.add(key)
        elif r.get("mode") == "full":
            total[r["op"]][key[1]] += float(r["ms_median"])
    out = {}
    for op, times in total.items():
        ok = {b: t for b, t in times.items() if (op, b) not in broken}
        if ok:
            out[op] = (min(ok, key=lambda b: (ok[b], b != "torch")), ok)
    return out


def provider_lines(rows: list[dict]) -> list[str]:
    """Per shape, each provider's fwd+bwd time, peak extra memory, % of the run's bf16 matmul
    peak (compute-bound ops) or copy peak, and its time relative to the fastest provider."""
    lines = []
    by_shape: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("mode") == "full" and r.get("op") not in STEP_OPS:
            by_shape[(r["op"], r["shape"])].append(r)
    for (op, shape), rs in sorted(by_shape.items()):
        ok = [r for r in rs if r.get("status") == "ok"]
        best = min((float(r["ms_median"]) for r in ok), default=0.0)
        peak = f"matmul {ok[0].get('peak_tflops')} TFLOP/s, copy {ok[0].get('peak_gbps')} GB/s" if ok else ""
        lines.append(f"  {op} {shape} fwd+bwd ({peak} this run):")
        for r in sorted(rs, key=lambda r: float(r["ms_median"]) if r.get("status") == "ok" else 1e30):
            if r.get("status") != "ok":
                lines.append(f"    {r['provider']:>11}: ERROR {r.get('note', '')[:100]}")
                continue
            ms = float(r["ms_median"])
            lines.append(
                f"    {r['provider']:>11}: {ms:10.3f} ms  {r['peak_mem_mb']!s:>9} MiB extra  "
                f"{r.get('pct_peak', '')!s:>6} % of peak  {ms / best:5.2f}x the fastest"
            )
    return lines


def step_lines(rows: list[dict]) -> list[str]:
    """Whole training steps (bench_lora's full / LoRA / QLoRA rows): time per step, the process's
    peak memory (not an op's extra) and the row's note (trainable parameters, optimizer state)."""
    lines = []
    for r in rows:
        if r.get("op") not in STEP_OPS:
            continue
        what = f"  {r['op']} {r.get('shape', '')} {r['provider']:>10}:"
        if r.get("status") != "ok":
            lines.append(f"{what} {str(r.get('status', '')).upper()} {r.get('note', '')[:200]}")
            continue
        ms, peak = float(r["ms_median"]), r["peak_mem_mb"]
        lines.append(f"{what} {ms:9.1f} ms/step, peak {peak} MiB, {r.get('dtype', '')}; {r.get('note', '')}")
    return lines


def check_lines(path: str) -> list[str]:
    """One line per (op, backend): passed or not, and the worst err / bound ratio."""
    worst: dict[tuple[str, str], float] = {}
    lines = []
    if not os.path.exists(path):
        return ["  no checks ran"]
    with open(path) as f:
        recs = [json.loads(line) for line in f]
    for r in recs:
        if "quantity" in r:
            k = (r["op"], r["backend"])
            worst[k] = max(worst.get(k, 0.0), r["err"] / r["bound"] if r["bound"] else float("inf"))
    for r in recs:
        if "passed" in r:
            k = (r["op"], r["backend"])
            ratio = f"worst err/bound {worst[k]:.2f}" if k in worst else r.get("note", "")
            verdict = "passed" if r["passed"] else "FAILED"
            lines.append(f"  {r['op']:15} {r['backend']:7} {r['size']} {verdict} ({ratio})")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", required=True, help="this run's rows")
    p.add_argument("--checks", required=True, help="gpu_validate's JSON lines")
    p.add_argument("--steps", default="", help="the step table of .ci/gpu_check.sh (for the summary)")
    p.add_argument("--out", required=True, help="folder: validated.json, results.csv, summary.txt")
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    cls = device_class(dev)
    rows = common.read_rows(args.csv)
    found = winners(rows, passed_checks(args.checks, cls))
    data = json.loads(VALIDATED_PATH.read_text()) if VALIDATED_PATH.exists() else {}
    table = data.setdefault("winners", {})
    for op in table:
        table[op].pop(cls, None)  # this run decides this class afresh
    name = common.device_name(dev)
    lines = [f"gpu-check {os.environ.get('BENCH_DATE', '')} on {name} (class {cls}), torch {torch.__version__}"]
    lines += ["", "float64 checks (benchmarks/gpu_validate.py):", *check_lines(args.checks), "", "winners:"]
    for op, (best, times) in sorted(found.items()):
        table.setdefault(op, {})[cls] = best
        listing = ", ".join(f"{b} {t:.3f} ms" for b, t in sorted(times.items(), key=lambda kv: kv[1]))
        lines.append(f"  {op}: auto -> {best}  (validated; full fwd+bwd summed over shapes: {listing})")
    lines += ["", "providers:", *provider_lines(rows)]
    steps = step_lines(rows)
    if steps:
        lines += ["", "whole training steps:", *steps]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "validated.json"), "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if os.path.exists(args.csv):
        shutil.copyfile(args.csv, os.path.join(args.out, "results.csv"))
    with open(os.path.join(args.out, "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
