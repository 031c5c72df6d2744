"""`make demo-multi`: `ian` against `sam` on the shapes world's multi-image tasks.

    python -m mage_fast.demo_multi --data DIR --out RUNS [--config YAML] [key=value ...]

Trains both aligners with the same config, seed and step budget (one process each, one after the
other), answers the held-out sets greedily, scores BLEU-4 / ROUGE-L / CIDEr-D per task
(`mage_fast.score`), and times one training step of each (forward, backward, AdamW; the same
batches, alternating, median CPU time over repeats; one process, no DeepSpeed) for the ratio sam / ian.
Writes RUNS/results.json, RUNS/results.md and RUNS/results.png; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from mage_fast.score import METRICS, load_predictions, load_references, scores_by_task

ALIGNERS = ("ian", "sam")


def train_one(config: str, data: str, run: str, aligner: str, overrides: list[str]) -> float:
    """Train one aligner in a child process; returns its wall time in seconds."""
    cmd = [
        sys.executable,
        "-m",
        "mage_fast.train",
        "--config",
        config,
        f"run_dir={run}",
        f"data.root={data}",
        f"model.aligner.type={aligner}",
        *overrides,
    ]
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=os.environ.get("MASTER_PORT", "29517"),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    t0 = time.time()
    subprocess.run(cmd, check=True, env=env)
    return time.time() - t0


def answer_and_score(run: str, data: str, max_new_tokens: int) -> dict:
    """Greedy answers on DATA/eval.json with the run's export, scored per task."""
    from mage_fast.eval import evaluate

    out = os.path.join(run, "answers_multi.jsonl")
    evaluate(os.path.join(run, "export"), os.path.join(data, "eval.json"), out, max_new_tokens=max_new_tokens)
    refs, tasks = load_references(os.path.join(data, "eval.json"))
    return scores_by_task(load_predictions(out), refs, tasks)


def _batches(model, tok, data: str, n: int, size: int) -> list[dict]:
    from mage_fast.data import Collator, ImageTransform, LlavaDataset

    ds = LlavaDataset(
        os.path.join(data, "train.json"),
        tok,
        image_root=data,
        transform=ImageTransform(model.image_size),
        num_image_tokens=model.num_image_tokens,
        max_length=256,
        max_bad_fraction=0.0,
    )
    collate = Collator(tok.pad_token_id, model.image_size)
    return [collate([ds[i * size + j] for j in range(size)]) for i in range(n)]


def _step(model, opt, batch: dict) -> float:
    """CPU seconds of this process for one step: on a shared machine the wall clock also counts
    other jobs' time slices, the process's CPU time only its own work (all its threads)."""
    t0 = time.process_time()
    out = model(**{k: v for k, v in batch.items() if k != "ids"})
    out["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.process_time() - t0


def step_times(runs: dict[str, str], data: str, batch_size: int, repeats: int) -> dict[str, float]:
    """Median CPU seconds per training step of each run's exported model, same batches, alternating,
    on one thread (on a shared machine, a multi-threaded step's CPU time also counts spin-waiting)."""
    from mage_fast.model.pretrained import load_pretrained

    models = {a: load_pretrained(os.path.join(r, "export")) for a, r in runs.items()}
    tok = next(iter(models.values()))[1]
    batches = _batches(models["ian"][0], tok, data, 2, batch_size)
    opts = {a: torch.optim.AdamW(m.parameters(), lr=1e-6) for a, (m, _) in models.items()}
    times: dict[str, list[float]] = {a: [] for a in runs}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for r in range(repeats + 1):
        for a, (m, _) in models.items():
            m.train()
            t = _step(m, opts[a], batches[r % len(batches)])
            if r:  # the first round warms up
                times[a].append(t)
    torch.set_num_threads(threads)
    return {a: statistics.median(v) for a, v in times.items()}


def write_results(out: str, table: dict, times: dict, walls: dict, steps: int) -> str:
    """results.json, results.md and results.png; returns the markdown table."""
    ratio = times["sam"] / times["ian"]
    lines = [
        "| task | n | " + " | ".join(f"{m} ian | {m} sam" for m in METRICS) + " |",
        "|---|---|" + "---|---|" * len(METRICS),
    ]
    for task, row in table["ian"].items():
        cells = " | ".join(f"{row[m]:.2f} | {table['sam'][task][m]:.2f}" for m in METRICS)
        lines.append(f"| {task} | {row['n']} | {cells} |")
    md = "\n".join(lines) + (
        f"\n\nTraining steps per aligner: {steps}. Step CPU time (forward + backward + AdamW, 8 rows, one thread, median): "
        f"ian {1e3 * times['ian']:.1f} ms, sam {1e3 * times['sam']:.1f} ms, ratio sam/ian {ratio:.2f}. "
        f"Training wall time (with start-up): ian {walls['ian']:.0f} s, sam {walls['sam']:.0f} s.\n"
    )
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(
            {"scores": table, "step_s": times, "ratio": ratio, "train_wall_s": walls, "steps": steps}, f, indent=1
        )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    plot_table(os.path.join(out, "results.png"), table, ratio, steps)
    return md


def plot_table(path: str, table: dict, ratio: float, steps: int) -> None:
    """The score table as a PNG (matplotlib's table, no axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["task", "n"] + [f"{m}\n{a}" for m in METRICS for a in ALIGNERS]
    rows = [
        [t, str(r["n"])] + [f"{table[a][t][m]:.2f}" for m in METRICS for a in ALIGNERS] for t, r in table["ian"].items()
    ]
    fig, ax = plt.subplots(figsize=(9, 0.5 + 0.4 * (len(rows) + 2)))
    ax.axis("off")
    ax.table(cellText=rows, colLabels=cols, loc="center", cellLoc="center").scale(1, 2.2)
    ax.set_title(f"shapes multi-image tasks, {steps} steps each; step CPU time sam/ian {ratio:.2f}")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.demo_multi", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a shapes_multi world")
    p.add_argument("--out", required=True, help="runs folder (RUNS/ian, RUNS/sam, results.*)")
    p.add_argument("--config", default="configs/train/demo_multi.yaml")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--time-repeats", type=int, default=10)
    p.add_argument("overrides", nargs="*", help="key=value for both trainings, e.g. max_steps=100")
    a = p.parse_args(argv)
    runs = {al: os.path.join(a.out, al) for al in ALIGNERS}
    walls = {al: train_one(a.config, a.data, runs[al], al, a.overrides) for al in ALIGNERS}
    table = {al: answer_and_score(runs[al], a.data, a.max_new_tokens) for al in ALIGNERS}
    with open(os.path.join(runs["ian"], "summary.json")) as f:
        steps = json.load(f)["step"]
    times = step_times(runs, a.data, batch_size=8, repeats=a.time_repeats)
    print(write_results(a.out, table, times, walls, steps))


if __name__ == "__main__":
    main()
