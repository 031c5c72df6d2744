"""The projector ablation on the built-in task: one table and one PNG.

    python -m mage_fast.apps.ablate [--out runs/ablate] [--steps 300] [--seeds 0 1 2] [--n 3000]

Variants: the aligners ian, mlp2x_gelu, linear, pool_mlp at λ = 1, and ian at λ = 0 and 0.1 (the
MSE weight); each trains configs/train/ablate.yaml (one process, the same data, steps and seeds)
and is scored on held-out exact match per question type. Columns: accuracy mean ± std over seeds,
visual tokens per image, median step time (history's wall clock, the first 5 steps and the
accuracy eval left out), peak resident memory of the training process. Written to OUT/: table.md,
results.json (every run), ablate.png. A run already in OUT (its summary.json) is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

from mage_fast.model.config import AlignerConfig, VisionConfig
from mage_fast.shapes.scenes import generate
from mage_fast.train.__main__ import main as train_main

VARIANTS = [("ian", 1.0), ("mlp2x_gelu", 1.0), ("linear", 1.0), ("pool_mlp", 1.0), ("ian", 0.0), ("ian", 0.1)]
QTYPES = ("colour", "shape", "position", "count", "overall")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
CONFIG = os.path.join(ROOT, "configs", "train", "ablate.yaml")


def name(aligner: str, lam: float) -> str:
    return f"{aligner} λ={lam:g}"


def child(overrides: list[str]) -> None:
    """Train in this process, then record its peak resident memory beside the run's summary."""
    code = train_main(["--config", CONFIG, *overrides])
    if code:
        sys.exit(code)  # stopped by a signal: no peak to record, the parent sees the status
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir="))
    with open(os.path.join(run_dir, "peak_rss.json"), "w") as f:
        json.dump({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, f)


def train_one(out: str, aligner: str, lam: float, seed: int, steps: int) -> dict:
    """One run (reused when its summary exists): accuracy per qtype, step seconds, peak MB."""
    run = os.path.join(out, "runs", f"{aligner}_l{lam:g}_s{seed}")
    if not os.path.isfile(os.path.join(run, "summary.json")):
        args = [
            f"run_dir={run}",
            f"data.root={os.path.join(out, 'data')}",
            f"model.aligner.type={aligner}",
            f"model.mse_lambda={lam}",
            f"seed={seed}",
            f"max_steps={steps}",
            "resume=false",
        ]
        subprocess.run([sys.executable, "-m", "mage_fast.apps.ablate", "--child", *args], check=True)
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run, "peak_rss.json")) as f:
        peak = json.load(f)["peak_rss_mb"]
    walls = [h["wall"] for h in summary["history"]]
    dts = [b - a for a, b in zip(walls[5:], walls[6:])]
    return {
        "aligner": aligner,
        "lambda": lam,
        "seed": seed,
        "accuracy": summary["accuracy"][-1]["accuracy"],
        "step_s": statistics.median(dts) if dts else float("nan"),
        "peak_rss_mb": peak,
    }


def tokens_per_image(aligner: str) -> int:
    v = VisionConfig(image_size=48, patch_size=8)
    return AlignerConfig(type=aligner, pool_k=2).num_tokens(v.grid)


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(results: list[dict]) -> list[dict]:
    """One row per variant: per-qtype (mean, std) over its seeds, tokens, step ms, peak MB."""
    rows = []
    for aligner, lam in VARIANTS:
        rs = [r for r in results if r["aligner"] == aligner and r["lambda"] == lam]
        if not rs:
            continue
        acc = {q: _mean_std([r["accuracy"].get(q, float("nan")) for r in rs]) for q in QTYPES}
        rows.append(
            {
                "variant": name(aligner, lam),
                "seeds": len(rs),
                "accuracy": acc,
                "tokens": tokens_per_image(aligner),
                "step_ms": 1000 * statistics.mean(r["step_s"] for r in rs),
                "peak_mb": max(r["peak_rss_mb"] for r in rs),
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: accuracy mean ± std per qtype, tokens, step time, peak memory."""
    head = "| variant | seeds | " + " | ".join(QTYPES) + " | visual tokens/image | step ms | peak RSS MB |"
    lines = [head, "|" + " --- |" * (len(QTYPES) + 5)]
    for r in rows:
        acc = " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in (r["accuracy"][q] for q in QTYPES))
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {acc} | {r['tokens']} | {r['step_ms']:.0f} | {r['peak_mb']:.0f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Grouped bars: accuracy per question type per variant, std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    w = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [q + i * w for q in range(len(QTYPES))]
        ax.bar(
            xs,
            [r["accuracy"][q][0] for q in QTYPES],
            w,
            yerr=[r["accuracy"][q][1] for q in QTYPES],
            label=f"{r['variant']} ({r['tokens']} tok)",
            capsize=2,
        )
    ax.set_xticks([q + 0.4 - w / 2 for q in range(len(QTYPES))], QTYPES)
    ax.set_ylabel("held-out exact match")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(prog="mage_fast.apps.ablate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablate")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=3000, help="images in the shapes world")
    a = p.parse_args(argv)

    if not os.path.isfile(os.path.join(a.out, "data", "world.json")):
        generate(os.path.join(a.out, "data"), n=a.n, seed=0)
    results = [train_one(a.out, al, lam, s, a.steps) for s in a.seeds for al, lam in VARIANTS]
    rows = aggregate(results)
    text = table(rows)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(f"{a.steps} steps x batch 16, seeds {a.seeds}, {a.n} images\n\n{text}\n")
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"steps": a.steps, "seeds": a.seeds, "n": a.n, "runs": results, "rows": rows}, f, indent=1)
    plot(rows, os.path.join(a.out, "ablate.png"))
    print(text)


if __name__ == "__main__":
    main()
