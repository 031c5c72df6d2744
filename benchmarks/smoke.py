"""`make bench-smoke`: every benchmark script on tiny shapes, in seconds, so none of them rots.

Runs bench_patch_pool (providers in a child process, as `make bench` does), bench_ian_projection
and bench_ce_mse (in this process), bench_step (tiny model, 2 steps, kernels on and off),
bench_packing (--smoke: padded, grouped and packed, one step each), bench_lora (--smoke: full and
LoRA under ZeRO-3, LoRA and QLoRA under ZeRO-2, 2 steps each; QLoRA skipped without bitsandbytes) and plot.py, into runs/bench-smoke/ (git-ignored), with `--strict`: any errored case fails. One
thread, `torch.compile` with the aot_eager backend (dynamo + AOTAutograd without Inductor's C++
build, which alone would take minutes cold). Timings here mean nothing; the guard does not run.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time

from benchmarks import (
    bench_ce_mse,
    bench_ian_projection,
    bench_lora,
    bench_packing,
    bench_patch_pool,
    bench_step,
    common,
    harness,
    plot,
)

OUT = os.path.join(common.ROOT, "runs", "bench-smoke")


def main() -> int:
    t0 = time.time()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    csv = os.path.join(OUT, "results.csv")
    os.environ["BENCH_DATE"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = [
        "--sweep",
        "smoke",
        "--threads",
        "1",
        "--compile-backend",
        "aot_eager",
        "--budget",
        "0.05",
        "--csv",
        csv,
        "--strict",
    ]
    failed = []
    for bench, isolate in ((bench_patch_pool, "op"), (bench_ian_projection, "none"), (bench_ce_mse, "none")):
        if harness.main(bench.BENCH, bench.__name__, [*flags, "--isolate", isolate]) != 0:
            failed.append(bench.BENCH.op)
    step = [
        "--isolate",
        "none",
        "--threads",
        "1",
        "--csv",
        csv,
        "--strict",
        "train.micro_batch_size=4",
        "bench.seq_len=64",
        "bench.warmup=1",
        "bench.steps=2",
    ]
    if bench_step.main(step) != 0:
        failed.append("step")
    if bench_packing.main(["--smoke", "--threads", "1", "--csv", csv]) != 0:
        failed.append("packing")
    if bench_lora.main(["--sizes", "demo", "--smoke", "--csv", csv]) != 0:
        failed.append("lora")
    if plot.main(["--csv", csv, "--out", OUT]) != 0:
        failed.append("plot")
    pngs = sorted(f for f in os.listdir(OUT) if f.endswith(".png"))
    want = {f"{op}_cpu.png" for op in ("patch_pool", "ian_projection", "ce_mse", "step", "packing")}
    if not want <= set(pngs):
        failed.append(f"plots missing: {sorted(want - set(pngs))}")
    rows = common.read_rows(csv)
    print(f"bench-smoke: {len(rows)} rows, plots {', '.join(pngs)} in {OUT} ({time.time() - t0:.0f} s)")
    if failed:
        print(f"bench-smoke: FAILED: {', '.join(failed)}")
    checks = 8  # three op scripts, the step, packing, lora, the plots, the PNG files
    print(f"bench-smoke: {checks - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
