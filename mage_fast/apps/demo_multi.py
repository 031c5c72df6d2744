"""`make demo-multi`: `ian` against `sam` on the shapes world's multi-image tasks, over seeds.

    python -m mage_fast.apps.demo_multi --data DIR --out RUNS [--seeds 0 1 2] [--jobs 2] [key=value ...]

Variants: ``ian``, ``sam`` (include-self, the authors' code) and ``sam_excl`` (exclude-self, their
paper), each trained with the same config (configs/train/demo_multi.yaml: one visual token per
image), seed, data order and step budget, one process per (variant, seed), ``--jobs`` at a time.
Each process trains, then answers the held-out sets greedily; a sam process also answers with
its guidance knocked out (P21 zeroed) and probes its guidance weights. A finished run (its
``done.json``) is reused, so an interrupted demo continues. Then: BLEU-4 / ROUGE-L / CIDEr-D per
task (SAM's rule, `mage_fast.apps.caption_score`) as mean ± std over seeds, the paired bootstrap interval of
each sam variant − ian (`mage_fast.apps.demo_multi_stats`), the bars (results.png) and the guidance
maps of a few held-out sets (guidance_<variant>.png, `mage_fast.apps.demo_multi_look`). Written to
RUNS/: results.json, results.md, results.png, guidance_*.png; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mage_fast.apps.demo_multi_look import answers, draw_maps, probe
from mage_fast.apps.demo_multi_report import write_results
from mage_fast.export.pretrained import load_pretrained
from mage_fast.shapes.multi import TASKS
from mage_fast.train.__main__ import main as train_main

VARIANTS: dict[str, list[str]] = {
    "ian": ["model.aligner.type=ian"],
    "sam": ["model.aligner.type=sam", "model.aligner.sam_include_self=true"],
    "sam_excl": ["model.aligner.type=sam", "model.aligner.sam_include_self=false"],
}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
CONFIG = os.path.join(ROOT, "configs", "train", "demo_multi.yaml")
MAP_SETS = 2  # held-out sets per task drawn in the guidance maps


def run_dir(out: str, variant: str, seed: int) -> str:
    return os.path.join(out, "runs", f"{variant}_s{seed}")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _write_json(path: str, obj: object) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def child(run: str, data: str, config: str, max_new_tokens: int, overrides: list[str]) -> None:
    """Train (unless the run's export exists), answer the held-out sets, probe a sam; done.json last."""
    timing = os.path.join(run, "train_time.json")
    if not os.path.isfile(os.path.join(run, "summary.json")):
        t0, c0 = time.time(), _cpu()
        code = train_main(["--config", config, f"run_dir={run}", f"data.root={data}", "resume=false", *overrides])
        if code:
            sys.exit(code)
        _write_json(timing, {"train_wall_s": time.time() - t0, "train_cpu_s": _cpu() - c0})
    # a run trained by another process without this record has no training time (null)
    trained = {"train_wall_s": None, "train_cpu_s": None}
    if os.path.isfile(timing):
        with open(timing) as f:
            trained = json.load(f)
    t1, c1 = time.time(), _cpu()
    import torch

    torch.set_num_threads(1)  # runs go side by side, one core each, as the config's threads=1 trains
    torch.manual_seed(0)
    model, tok = load_pretrained(os.path.join(run, "export"))
    with open(os.path.join(data, "eval.json")) as f:
        rows = json.load(f)
    said = {"answers": answers(model, tok, data, rows, max_new_tokens)}
    if hasattr(model.aligner, "p21"):
        said["answers_noguide"] = answers(model, tok, data, rows, max_new_tokens, guidance=False)
        said["probe"] = probe(model, data, rows)
    with open(os.path.join(run, "summary.json")) as f:
        steps = json.load(f)["step"]
    times = {**trained, "eval_wall_s": time.time() - t1, "eval_cpu_s": _cpu() - c1}
    _write_json(os.path.join(run, "done.json"), {**said, "steps": steps, **times})


def launch(out: str, data: str, config: str, variant: str, seed: int, port: int, a: argparse.Namespace) -> dict:
    """One (variant, seed) in a child process unless its done.json exists; returns done.json."""
    run = run_dir(out, variant, seed)
    done = os.path.join(run, "done.json")
    if not os.path.isfile(done):
        overrides = [*VARIANTS[variant], f"seed={seed}", *a.overrides]
        cmd = [sys.executable, "-m", "mage_fast.apps.demo_multi", "--child", run, data, config, str(a.max_new_tokens)]
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        log = os.path.join(out, "runs", f"{variant}_s{seed}.log")
        os.makedirs(os.path.dirname(log), exist_ok=True)
        print(f"demo-multi: {variant} seed {seed} (log {log})", flush=True)
        with open(log, "w") as f:
            subprocess.run([*cmd, *overrides], check=True, env=env, stdout=f, stderr=subprocess.STDOUT)
    with open(done) as f:
        return json.load(f)


def run_all(a: argparse.Namespace) -> dict[str, list[dict]]:
    """{variant: [done.json per seed, in --seeds order]}, ``--jobs`` processes at a time."""
    jobs = [(v, s) for s in a.seeds for v in VARIANTS]
    base = int(os.environ.get("MASTER_PORT", "29517"))
    with ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futs = {
            (v, s): pool.submit(launch, a.out, a.data, a.config, v, s, base + i, a) for i, (v, s) in enumerate(jobs)
        }
        results = {k: f.result() for k, f in futs.items()}
    return {v: [results[(v, s)] for s in a.seeds] for v in VARIANTS}


def draw_guidance(a: argparse.Namespace, done: dict[str, list[dict]]) -> list[str]:
    """guidance_<variant>.png for each sam variant's first seed over MAP_SETS held-out sets per task."""
    with open(os.path.join(a.data, "eval.json")) as f:
        rows = json.load(f)
    picked = [r for t in TASKS for r in [x for x in rows if x["task"] == t][:MAP_SETS]]
    said = {v: done[v][0]["answers"] for v in VARIANTS}
    paths = []
    for v in VARIANTS:
        if v == "ian":
            continue
        model, _ = load_pretrained(os.path.join(run_dir(a.out, v, a.seeds[0]), "export"))
        paths.append(os.path.join(a.out, f"guidance_{v}.png"))
        draw_maps(model, a.data, picked, said, paths[-1])
    return paths


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        run, data, config, mnt, *overrides = argv[1:]
        return child(run, data, config, int(mnt), overrides)
    p = argparse.ArgumentParser(prog="mage_fast.apps.demo_multi", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a shapes.multi world")
    p.add_argument("--out", required=True, help="runs folder (RUNS/runs/<variant>_s<seed>, results.*)")
    p.add_argument("--config", default=CONFIG)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("overrides", nargs="*", help="key=value for every training, e.g. max_steps=100")
    a = p.parse_args(argv)
    if len(a.seeds) < 2:
        print("demo-multi: one seed gives no spread and no seed resampling; use >= 3 for a claim", flush=True)
    t0 = time.time()
    done = run_all(a)

    maps = draw_guidance(a, done)
    print(write_results(a.out, a.data, done, a.seeds, maps, a.boot, time.time() - t0))


if __name__ == "__main__":
    main()
