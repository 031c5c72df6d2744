"""demo-multi's report: scores per seed, mean ± std, sam − ian intervals, knock-out, probe, bars."""

from __future__ import annotations

import json
import os

from mage_fast.apps.caption_score import METRICS, load_references, scores_by_task
from mage_fast.apps.demo_multi_stats import item_scores, mean_std, object_hits, paired_bootstrap

BASE = "ian"


def summarise(data: str, done: dict[str, list[dict]], n_boot: int) -> dict:
    """Scores per variant and seed, their mean ± std, and each other variant − ian's interval."""
    refs, tasks = load_references(os.path.join(data, "eval.json"))
    groups = {t: [k for k in refs if tasks[k] == t] for t in dict.fromkeys(tasks.values())}
    groups["all"] = list(refs)
    out: dict = {"scores": {}, "mean_std": {}, "diff": {}, "noguide": {}, "probe": {}, "objects": {}}
    for v, runs in done.items():
        out["scores"][v] = [scores_by_task(r["answers"], refs, tasks) for r in runs]
        out["mean_std"][v] = _mean_std(out["scores"][v])
        out["objects"][v] = _objects([object_hits(r["answers"], refs, tasks) for r in runs])
        if "answers_noguide" in runs[0]:
            out["noguide"][v] = _mean_std([scores_by_task(r["answers_noguide"], refs, tasks) for r in runs])
            out["objects"][v + " without guidance"] = _objects(
                [object_hits(r["answers_noguide"], refs, tasks) for r in runs]
            )
            out["probe"][v] = {
                k: mean_std([r["probe"][k] for r in runs]) for k in ("entropy", "link_lift", "guidance_size")
            }
    items = {
        v: {t: [item_scores(r["answers"], refs, ids) for r in runs] for t, ids in groups.items()}
        for v, runs in done.items()
    }
    for v in done:
        if v != BASE:
            out["diff"][v] = {t: paired_bootstrap(items[BASE][t], items[v][t], n_boot) for t in groups}
    return out


def _mean_std(per_seed: list[dict]) -> dict:
    return {t: {m: mean_std([s[t][m] for s in per_seed]) for m in METRICS} for t in per_seed[0]}


def _objects(per_seed: list[dict]) -> dict:
    return {t: {k: mean_std([s[t][k] for s in per_seed]) for k in ("object", "distinct")} for t in per_seed[0]}


def markdown(s: dict, seeds: list[int], steps: int, timing: dict) -> str:
    """The report's tables: scores mean ± std with the intervals; knock-out; guidance probe."""
    vs = list(s["mean_std"])
    others = [v for v in vs if v != BASE]
    head = "| task | metric | " + " | ".join(vs) + " | " + " | ".join(f"{v} − {BASE} [95 % CI]" for v in others) + " |"
    lines = [head, "|---" * (2 + len(vs) + len(others)) + "|"]
    for t in s["mean_std"][BASE]:
        for m in METRICS:
            cells = [f"{s['mean_std'][v][t][m][0]:.1f} ± {s['mean_std'][v][t][m][1]:.1f}" for v in vs]
            cells += [_ci(s["diff"][v][t][m]) for v in others]
            lines.append(f"| {t} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "The linked object named (the answer's first colour + shape is the reference's; chance ~0.08) "
              "and distinct answers among the sets, mean ± std over seeds:", ""]  # fmt: skip
    lines += ["| task | " + " | ".join(s["objects"]) + " |", "|---" * (1 + len(s["objects"])) + "|"]
    for t in s["objects"][BASE]:
        cells = [
            f"{o[t]['object'][0]:.2f} ± {o[t]['object'][1]:.2f} ({o[t]['distinct'][0]:.0f} distinct)"
            for o in s["objects"].values()
        ]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "Guidance knocked out (P21 zeroed at answer time), CIDEr-D mean ± std:", ""]
    lines += ["| task | " + " | ".join(f"{v} | {v} without guidance" for v in s["noguide"]) + " |"]
    lines += ["|---" * (1 + 2 * len(s["noguide"])) + "|"]
    for t in s["mean_std"][BASE]:
        cells = [f"{s['mean_std'][v][t]['CIDEr-D'][0]:.1f} ± {s['mean_std'][v][t]['CIDEr-D'][1]:.1f} | "
                 f"{s['noguide'][v][t]['CIDEr-D'][0]:.1f} ± {s['noguide'][v][t]['CIDEr-D'][1]:.1f}" for v in s["noguide"]]  # fmt: skip
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", "Guidance probe on the held-out sets (mean ± std over seeds): alpha's normalised entropy "
              "(1 = uniform), link_lift (alpha on the linked object's patches x images in the context; "
              "1 = no preference), guidance size ||P21(c_i)|| / ||b_i||:", ""]  # fmt: skip
    lines += ["| variant | entropy | link_lift | guidance size |", "|---|---|---|---|"]
    for v, p in s["probe"].items():
        lines.append(
            f"| {v} | "
            + " | ".join(f"{p[k][0]:.3f} ± {p[k][1]:.3f}" for k in ("entropy", "link_lift", "guidance_size"))
            + " |"
        )
    lines += ["", f"Seeds {seeds}, {steps} steps of 16 rows per run. " + _timing_line(timing)]
    return "\n".join(lines) + "\n"


def _ci(d: dict) -> str:
    return f"{d['diff']:+.1f} [{d['lo']:+.1f}, {d['hi']:+.1f}]"


def _timing_line(t: dict) -> str:
    untimed = t.get("untimed_trainings")
    untimed = f" ({untimed} trained by another process, not counted)" if untimed else ""
    return (f"Wall {t['wall_s']:.0f} s for this invocation; CPU time of the runs: training {t['train_cpu_s']:.0f} s{untimed}, "
            f"answering and probing {t['eval_cpu_s']:.0f} s (on an idle 2-core machine with 2 jobs the runs "
            f"take about half their CPU time in wall time).")  # fmt: skip


def plot_bars(s: dict, path: str) -> None:
    """One panel per metric: bars per task and variant, std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs, tasks = list(s["mean_std"]), list(s["mean_std"][BASE])
    panels = [*METRICS, "linked object named"]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.4))
    w = 0.8 / len(vs)
    for ax, m in zip(axes, panels):
        for i, v in enumerate(vs):
            xs = [j + (i - (len(vs) - 1) / 2) * w for j in range(len(tasks))]
            ms = [s["mean_std"][v][t][m] if m in METRICS else s["objects"][v][t]["object"] for t in tasks]
            ax.bar(xs, [x[0] for x in ms], w, yerr=[x[1] for x in ms], capsize=3, label=v)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_title(m)
        if m not in METRICS:
            ax.axhline(1 / 12, color="grey", ls="--", lw=1, label="chance (1 of 12 objects)")
    axes[0].legend(fontsize=8)
    axes[-1].legend(fontsize=7)
    fig.suptitle("held-out multi-image tasks: mean ± std over seeds (one visual token per image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(out: str, data: str, done: dict, seeds: list[int], maps: list[str], n_boot: int, wall: float) -> str:
    """results.json, results.md and results.png in ``out``; returns the markdown."""
    s = summarise(data, done, n_boot)
    runs = [r for rs in done.values() for r in rs]
    timing = {
        "wall_s": wall,
        "train_cpu_s": sum(r["train_cpu_s"] for r in runs if r.get("train_cpu_s") is not None),
        "untimed_trainings": sum(r.get("train_cpu_s") is None for r in runs),
        "eval_cpu_s": sum(r["eval_cpu_s"] for r in runs),
    }
    steps = runs[0]["steps"]
    md = markdown(s, seeds, steps, timing)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "results.json.tmp"), "w") as f:
        json.dump({**s, "seeds": seeds, "steps": steps, "timing": timing, "maps": maps, "n_boot": n_boot}, f, indent=1)
    os.replace(os.path.join(out, "results.json.tmp"), os.path.join(out, "results.json"))
    plot_bars(s, os.path.join(out, "results.png"))
    return md
