"""Padded vs length-grouped vs packed training steps on a LLaVA-665k-like mix, in one run.

    python -m benchmarks.bench_packing              # demo-size and wide model, max_length 2048
    python -m benchmarks.bench_packing --smoke      # seconds: demo model, 4 rows, max_length 512

The rows come from `benchmarks.packing_data` (its doc says where the shares and lengths come
from). Every mode trains on the same rows with the same samples per step: `padded` takes them in
drawn order, one right-padded row each (today's Collator); `grouped` regroups them by length and
modality (`data.group_by_length`: the sampler's `length_grouped_units`); `packed` packs each
padded step's samples into rows of at most max_length tokens (`data.packing`). A step is the
training loop's own `train_step` on a ZeRO-3 engine of one rank (bench_step's engine), fp32.

Per mode: pad fraction (padding positions / all positions), real (non-pad) tokens per second over
the timed steps, the median step time, the process's peak resident set (one step of the mode's
largest batch), and the ratios to padded. The modes' steps are timed round-robin, so a change in
the machine's load falls on all three alike.
Rows go to the results CSV (op `packing`) and a plot to benchmarks/results/packing_<device>.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from benchmarks import bench_step, common
from benchmarks.packing_data import synthetic_rows, with_pixels
from mage_fast.data import Collator
from mage_fast.train.sampler import length_grouped_units
from mage_fast.train.step import train_step

MODES = ("padded", "grouped", "packed")
# MAGE's image length: a 24 x 24 patch grid pooled 2 x 2 = 144 tokens per image.
VISION = ["train.model.vision.image_size=96", "train.model.vision.patch_size=4"]
MODELS = {
    "demo": [],
    "wide": [
        "train.model.llm.hidden_size=256",
        "train.model.llm.intermediate_size=768",
        "train.model.llm.num_layers=4",
    ],
}


def mode_batches(rows: list[dict], mode: str, batch: int, max_length: int, pad_id: int, image_size: int) -> list:
    """The rows as collated steps of `batch` samples each, in the mode's order and layout."""
    vocab = int(rows[0]["input_ids"].max()) + 1
    if mode == "grouped":
        lengths = [len(r["input_ids"]) for r in rows]
        g = torch.Generator().manual_seed(0)
        steps = length_grouped_units(list(range(len(rows))), lengths, [r["images"] > 0 for r in rows], batch, g)
    else:
        steps = [list(range(i, i + batch)) for i in range(0, len(rows), batch)]
    collate = Collator(pad_id, image_size, max_length if mode == "packed" else None)
    return [collate([with_pixels(rows[i], image_size, vocab) for i in idx]) for idx in steps]


def peak_memory(engine, world: int, batches: list, device: torch.device) -> int:
    """The process's peak memory over one step of the mode's largest batch (most positions)."""
    big = max(batches, key=lambda b: b["attention_mask"].numel())
    common.cpu_rss_reset() if device.type == "cpu" else torch.cuda.reset_peak_memory_stats()
    train_step(engine, [big], 0, world)
    common.sync(device)
    return common.cpu_peak_rss() if device.type == "cpu" else torch.cuda.max_memory_allocated()


def time_modes(engine, world: int, batches: dict[str, list], device: torch.device) -> dict[str, dict]:
    """Every mode's steps timed round-robin (step i of each mode, then step i + 1), so a change in
    the machine's load during the run falls on all modes alike -> each mode's figures."""
    ms: dict[str, list[float]] = {m: [] for m in batches}
    for i in range(len(batches["padded"])):
        for mode, bs in batches.items():
            ms[mode].append(common.timed(lambda b=bs[i]: train_step(engine, [b], 0, world), device))
    out = {}
    for mode, bs in batches.items():
        real = sum(int(b["attention_mask"].sum()) for b in bs)
        positions = sum(b["attention_mask"].numel() for b in bs)
        rows = sum(b["input_ids"].shape[0] for b in bs) / len(bs)
        out[mode] = {"ms": ms[mode], "pad": 1.0 - real / positions, "tok_s": real / (sum(ms[mode]) / 1e3), "rows": rows}
    return out


def run_model(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """The three modes on one model -> CSV rows."""
    over = [*VISION, *MODELS[name], f"train.model.llm.max_position_embeddings={args.max_length}"]
    cfg, sb = bench_step.load(os.path.join(bench_step.CONFIGS, "step_tiny.yaml"), over)
    engine, model, _, world, _hf = bench_step._engine(cfg, sb, "kernels_on")
    n = args.batch * (args.steps + 1)
    rows, dropped = synthetic_rows(n, model.num_image_tokens, args.max_length, sb.vocab_size, seed=args.seed)
    timed, warm = rows[: -args.batch], rows[-args.batch :]
    pad_id, size = 0, model.image_size
    batches = {m: mode_batches(timed, m, args.batch, args.max_length, pad_id, size) for m in MODES}

    train_step(engine, mode_batches(warm, "padded", args.batch, args.max_length, pad_id, size)[:1], 0, world)
    peaks = {m: peak_memory(engine, world, batches[m], device) for m in MODES}
    figures = time_modes(engine, world, batches, device)
    for mode in MODES:
        figures[mode]["peak"] = peaks[mode]
        print(f"[packing] {name} {mode}: {common.summarize(figures[mode]['ms']).median:.0f} ms/step", flush=True)
    base = figures["padded"]
    out = []
    for mode, f in figures.items():
        t = common.summarize(f["ms"])
        out.append(
            {
                "op": "packing",
                "provider": mode,
                "mode": "full",
                "shape": f"{name},B={args.batch},max_length={args.max_length}",
                "dtype": "float32",
                "ms_median": round(t.median, 1),
                "ms_p20": round(t.p20, 1),
                "ms_p80": round(t.p80, 1),
                "reps": t.reps,
                "peak_mem_mb": common.fmt_mb(f["peak"]),
                "mem_method": common.memory_method(device) + "_total",
                "tokens_per_s": round(f["tok_s"], 1),
                "status": "ok",
                "note": f"pad fraction {f['pad']:.4f}; real tokens/s x{f['tok_s'] / base['tok_s']:.2f} of padded; "
                f"step time x{t.median / common.summarize(base['ms']).median:.2f}; rows/step {f['rows']:.1f}; "
                f"{dropped} drawn rows over max_length dropped; {model.num_image_tokens} tokens/image",
            }
        )
    return out


def plot_packing(rows: list[dict], path: str) -> None:
    """Bars per model and mode: pad fraction, real tokens/s, step time, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    panels = (("pad", "pad fraction"), ("tokens_per_s", "real tokens/s"), ("ms_median", "step time (ms)"),
              ("peak_mem_mb", "peak memory (MiB, process)"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        for k, mode in enumerate(MODES):
            sel = [next((r for r in rows if r["shape"] == s and r["provider"] == mode), None) for s in shapes]
            vals = [_value(r, key) for r in sel]
            ax.bar([i + 0.27 * (k - 1) for i in range(len(shapes))], vals, width=0.27, label=mode)
        ax.set_xticks(range(len(shapes)), [s.split(",")[0] for s in shapes])
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    r = rows[0]
    fig.suptitle(
        f"packing on {r['device_name']}, {shapes[0].split(',', 1)[1]}, {r['commit']}, {r['date']}", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _value(row: dict | None, key: str) -> float:
    if row is None:
        return float("nan")
    if key == "pad":
        return float(row["note"].split("pad fraction ")[1].split(";")[0])
    return float(row[key])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Padded vs grouped vs packed steps on a LLaVA-like mix.")
    p.add_argument("--models", default="demo,wide")
    p.add_argument("--batch", type=int, default=16, help="samples per step (every mode)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per mode")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--csv", default=common.RESULTS_CSV)
    p.add_argument("--out", default=None, help="plot folder (default: the CSV's)")
    p.add_argument("--smoke", action="store_true", help="demo model, 4 rows, max_length 512, 1 step")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.batch, args.steps, args.max_length = "demo", 4, 1, 512
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0, rows = time.time(), []
    for name in args.models.split(","):
        rows += run_model(name, args, device)
    ident = common.run_identity(device)
    for r in rows:
        r.update(ident)
        print(f"[packing] {r['shape']} {r['provider']:>7}: {r['ms_median']:.0f} ms/step, {r['tokens_per_s']:.0f} "
              f"real tokens/s, peak {r['peak_mem_mb']} MiB; {r['note']}", flush=True)  # fmt: skip
    if args.csv:
        common.append_rows(rows, args.csv)
        out = args.out or os.path.dirname(os.path.abspath(args.csv))
        plot_packing(rows, os.path.join(out, f"packing_{common.device_class(device)}.png"))
    print(f"[packing] {len(rows)} rows -> {args.csv or '(not written)'} in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
