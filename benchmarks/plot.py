"""PNG plots of benchmarks/results/results.csv: per op and device, the latest run.

    python -m benchmarks.plot                      # every (op, device) in the CSV
    python -m benchmarks.plot --device cpu --op ce_mse --out /tmp/plots

Per op: one row of panels per mode (forward, backward, full); columns: median time (with the
20-80 % spread as a band), peak extra memory, and % of the run's roofline peak; x = the sweep's
shapes in run order, y logarithmic; one line per provider. `step`: bars of tokens/s, MFU and
peak memory per setting; `packing`: bench_packing's bars per mode.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from benchmarks import common


def _f(v: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _title(rows: list[dict]) -> str:
    r = rows[0]
    return f"{r['op']} on {r['device_name']} ({r['dtype']}), commit {r['commit']}, {r['date']}"


def plot_op(rows: list[dict], path: str) -> None:
    """Time / memory / % peak against shape, a line per provider, a panel row per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    modes = [m for m in common.MODES if any(r["mode"] == m for r in rows)]
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    fig, axes = plt.subplots(len(modes), 3, figsize=(16, 3.6 * len(modes) + 0.8), squeeze=False)
    x = list(range(len(shapes)))
    for i, mode in enumerate(modes):
        for p in providers:
            got = {r["shape"]: r for r in rows if r["mode"] == mode and r["provider"] == p and r["status"] == "ok"}
            if not got:
                continue

            def col(name: str, got: dict = got) -> list[float]:
                return [_f(got[s][name]) if s in got else math.nan for s in shapes]

            line = axes[i][0].plot(x, col("ms_median"), marker="o", label=p)[0]
            axes[i][0].fill_between(x, col("ms_p20"), col("ms_p80"), color=line.get_color(), alpha=0.15)
            axes[i][1].plot(x, col("peak_mem_mb"), marker="o", label=p, color=line.get_color())
            axes[i][2].plot(x, col("pct_peak"), marker="o", label=p, color=line.get_color())
        for j, (what, log) in enumerate((("time (ms)", True), ("peak extra memory (MiB)", True), ("% of peak", False))):
            ax = axes[i][j]
            ax.set_title(f"{mode}: {what}", fontsize=10)
            ax.set_xticks(x, shapes, rotation=30, ha="right", fontsize=7)
            if log:
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
        axes[i][0].legend(fontsize=8)
    bound = rows[0].get("bound") or "?"
    fig.suptitle(f"{_title(rows)}; % of peak: {'matmul' if bound == 'compute' else 'copy'} roofline", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_step(rows: list[dict], path: str) -> None:
    """Bars per (shape, setting): tokens/s, MFU (% of the measured matmul peak), peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    labels = [f"{r['shape']}\n{r['provider']}" for r in ok]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, (name, what) in zip(
        axes,
        (("tokens_per_s", "tokens/s"), ("pct_peak", "MFU (%)"), ("peak_mem_mb", "peak memory (MiB, whole process)")),
    ):
        ax.bar(
            range(len(ok)),
            [_f(r[name]) for r in ok],
            color=["C0" if r["provider"] == "kernels_on" else "C1" for r in ok],
        )
        ax.set_xticks(range(len(ok)), labels, fontsize=7)
        ax.set_title(what, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(_title(ok or rows), fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Plot the latest run per (op, device) of the results CSV.")
    p.add_argument("--csv", default=common.RESULTS_CSV)
    p.add_argument("--out", default=None, help="output folder (default: the CSV's folder)")
    p.add_argument("--device", default=None, help="device class (cpu, h100, h200); default: all")
    p.add_argument("--op", default=None)
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plot: matplotlib is not installed (pip install -r requirements.txt); no plots drawn", file=sys.stderr)
        return 1
    rows = common.latest_run(common.read_rows(args.csv), device=args.device, op=args.op)
    if not rows:
        print(f"plot: no rows in {args.csv} for device={args.device} op={args.op}", file=sys.stderr)
        return 1
    out = args.out or os.path.dirname(os.path.abspath(args.csv))
    os.makedirs(out, exist_ok=True)
    for op, device in sorted({(r["op"], r["device"]) for r in rows}):
        sel = [r for r in rows if r["op"] == op and r["device"] == device]
        path = os.path.join(out, f"{op}_{device}.png")
        if op == "packing":
            from benchmarks.bench_packing import plot_packing

            plot_packing(sel, path)
        else:
            (plot_step if op == "step" else plot_op)(sel, path)
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
