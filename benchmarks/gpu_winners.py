"""Last step of `make gpu-check`: from this run's CSV rows (BENCH_DATE), the measured winner per op
among mage-fast's own backends on this GPU's class, written to mage_fast/ops/validated.json (what
`backend="auto"` reads on CUDA), and a plain summary beside the run's logs.

A backend is a candidate only when its rows are all `ok`: the correctness tests ran before the
sweep (gpu-check stops at a failure), so a listed winner is validated and measured. The winner is
the backend with the lowest summed `full`-mode median over the op's shapes; `torch` wins ties.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import torch

from benchmarks import common
from mage_fast.ops import _backend

OURS = {"op_torch": "torch", "cpp": "cpp", "triton": "triton", "cuda": "cuda"}


def winners(rows: list[dict], date: str) -> dict[str, tuple[str, dict[str, float]]]:
    """op -> (winning backend, backend -> summed full-mode ms) over this run's rows."""
    total: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    broken: set[tuple[str, str]] = set()
    for r in rows:
        if r.get("date") != date or r.get("provider") not in OURS:
            continue
        key = (r["op"], OURS[r["provider"]])
        if r.get("status") != "ok":
            broken.add(key)
        elif r.get("mode") == "full":
            total[r["op"]][key[1]] += float(r["ms_median"])
    out = {}
    for op, times in total.items():
        ok = {b: t for b, t in times.items() if (op, b) not in broken}
        if ok:
            best = min(ok, key=lambda b: (ok[b], b != "torch"))
            out[op] = (best, ok)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--date", default=os.environ.get("BENCH_DATE"), required=not os.environ.get("BENCH_DATE"))
    p.add_argument("--summary", default=os.path.join(common.ROOT, "runs", "gpu-check", "summary.txt"))
    args = p.parse_args()
    cls = _backend.device_class(torch.device("cuda"))
    found = winners(common.read_rows(), args.date)
    data = json.loads(_backend.VALIDATED_PATH.read_text()) if _backend.VALIDATED_PATH.exists() else {}
    table = data.setdefault("winners", {})
    lines = [f"gpu-check {args.date} on {torch.cuda.get_device_name(0)} (class {cls})"]
    for op, (best, times) in sorted(found.items()):
        table.setdefault(op, {})[cls] = best
        listing = ", ".join(f"{b} {t:.3f} ms" for b, t in sorted(times.items(), key=lambda kv: kv[1]))
        lines.append(f"  {op}: auto -> {best}  (full fwd+bwd, summed over shapes: {listing})")
    _backend.VALIDATED_PATH.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.makedirs(os.path.dirname(args.summary), exist_ok=True)
    with open(args.summary, "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"gpu-check: winners -> {os.path.relpath(_backend.VALIDATED_PATH, common.ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
