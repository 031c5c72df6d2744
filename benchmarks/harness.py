"""The sweep runner behind bench_<op>.py: providers x shapes x modes -> CSV rows.

An op benchmark declares an `OpBench` (its shapes, inputs, FLOP/byte model and providers) and
calls `main(bench)`. The parent process lists the providers (printing why any is skipped),
measures the roofline peaks, then runs every provider in a child process (`--isolate provider`,
the default: its peak memory is its own) or all of them in one child (`--isolate op`, quicker,
for the smoke run), collects the rows the children print (benchmarks/measure.py measures them),
adds the roofline and appends them to benchmarks/results/results.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from benchmarks import common, opbench, profiling
from benchmarks.common import ROW_TAG
from benchmarks.measure import ModeCall, mode_call, run_child
from benchmarks.opbench import OpBench, default_dtype, shape_label, sweep_shapes
from benchmarks.peaks import Peaks, measure_peaks, roofline


# -- the parent: plan, spawn, collect, write ---------------------------------------------------
def parse_args(bench: OpBench, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"Benchmark {bench.op} over providers, shapes and modes.")
    p.add_argument(
        "--sweep",
        default=None,
        help="full (the device's sweep, the default), smoke, cpu, gpu or check (make gpu-check)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--providers", default=None, help="comma list (default: every available one)")
    p.add_argument("--modes", default=",".join(common.MODES))
    p.add_argument(
        "--isolate",
        choices=("provider", "op", "none"),
        default="provider",
        help="a child process per provider (default), one for the op, or none",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="CPU: seconds of timed calls per case (default 0.5; smoke 0.05); at least 2 calls",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of `compile`")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="where rows are appended ('' for nowhere)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any case errored (the smoke run)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="torch.profiler trace per provider on the sweep's first shape (default sweep: smoke on CPU), "
        "top kernels; on a GPU the ncu/nsys command lines (benchmarks/profiling.py)",
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--shape-json", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan(bench: OpBench, args: argparse.Namespace, device: torch.device) -> list[str]:
    """Providers that will run; prints every skipped one with its reason."""
    wanted = args.providers.split(",") if args.providers else [p.name for p in bench.providers]
    known = {p.name: p for p in bench.providers}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"{bench.op}: unknown provider(s) {unknown}; known: {', '.join(known)}")
    run = []
    for name in wanted:
        why = known[name].available(device)
        if why:
            print(f"[{bench.op}] skip {name}: {why}", flush=True)
        else:
            run.append(name)
    return run


def _spawn(bench: OpBench, bench_module: str, args: argparse.Namespace, providers: list[str], dtype: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        bench_module,
        "--child",
        "--sweep",
        args.sweep,
        "--device",
        args.device,
        "--dtype",
        dtype,
        "--providers",
        ",".join(providers),
        "--modes",
        args.modes,
    ]
    if args.budget is not None:
        cmd += ["--budget", str(args.budget)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--compile-backend", args.compile_backend]
    if args.shape_json:
        cmd += ["--shape-json", args.shape_json]
    proc = subprocess.Popen(cmd, cwd=common.ROOT, stdout=subprocess.PIPE, text=True)
    rows = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(ROW_TAG):
            rows.append(json.loads(line[len(ROW_TAG) :]))
        else:
            print(line, end="", flush=True)
    if proc.wait() != 0:
        rows.append(
            {
                "op": bench.op,
                "provider": ",".join(providers),
                "mode": "-",
                "shape": "-",
                "dtype": dtype,
                "status": "error",
                "note": f"child exited with {proc.returncode}",
            }
        )
    return rows


def main(bench: OpBench, module: str, argv: list[str] | None = None) -> int:
    """CLI entry of bench_<op>.py; `module` is its importable name (for the child processes)."""
    args = parse_args(bench, argv)
    device = torch.device(args.device)
    if args.sweep is None:
        args.sweep = "smoke" if args.profile and device.type == "cpu" else "full"
    dtype = args.dtype or default_dtype(device)
    shapes = [json.loads(args.shape_json)] if args.shape_json else sweep_shapes(bench, args.sweep, device)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in common.MODES]
    if bad:
        raise SystemExit(f"unknown mode(s) {bad}; choose from {common.MODES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    opbench.COMPILE_BACKEND = args.compile_backend
    budget = args.budget if args.budget is not None else (0.05 if args.sweep == "smoke" else 0.5)
    if args.child:
        run_child(bench, args.providers.split(","), shapes, modes, dtype, device, budget)
        return 0

    t0 = time.time()
    providers = plan(bench, args, device)
    if args.profile:
        return profile_all(bench, module, providers, shapes[0], modes, dtype, device)
    print(
        f"[{bench.op}] device {common.device_name(device)}, dtype {dtype}, sweep {args.sweep}: "
        f"{len(shapes)} shape(s) x {len(modes)} mode(s) x providers {', '.join(providers)}",
        flush=True,
    )
    peaks = measure_peaks(device, common.dtype_of(dtype), small=args.sweep == "smoke")
    print(
        f"[{bench.op}] peaks this run: copy {peaks.gbps:.1f} GB/s, matmul ({peaks.matmul_dtype}) "
        f"{peaks.tflops:.3f} TFLOP/s",
        flush=True,
    )
    rows: list[dict] = []
    # Each child's rows reach the CSV when it ends: a run stopped later (a timeout) keeps them.
    for group in _collect(bench, module, args, providers, shapes, modes, dtype, device, budget):
        _annotate(bench, args, group, shapes, dtype, device, peaks)
        if args.csv:
            common.append_rows(group, args.csv)
        rows += group
    print_table(rows)
    print(f"[{bench.op}] {len(rows)} row(s) -> {args.csv or '(not written)'} in {time.time() - t0:.0f} s", flush=True)
    errors = sum(r.get("status") != "ok" for r in rows)
    if errors:
        print(f"[{bench.op}] WARNING: {errors} case(s) errored (rows with status=error)", flush=True)
    return 1 if errors and args.strict else 0


def _collect(
    bench: OpBench,
    module: str,
    args: argparse.Namespace,
    providers: list[str],
    shapes: list[dict],
    modes: list[str],
    dtype: str,
    device: torch.device,
    budget: float,
) -> Iterator[list[dict]]:
    """The rows of every provider, one list per process that measured them: this one
    (--isolate none), one child for all (op) or a child per provider."""
    if args.isolate == "none":
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            run_child(bench, providers, shapes, modes, dtype, device, budget)
        yield [json.loads(ln[len(ROW_TAG) :]) for ln in buf.getvalue().splitlines() if ln.startswith(ROW_TAG)]
        return
    groups = [[p] for p in providers] if args.isolate == "provider" else [providers]
    for group in groups:
        if group:
            yield _spawn(bench, module, args, group, dtype)


def _annotate(
    bench: OpBench,
    args: argparse.Namespace,
    rows: list[dict],
    shapes: list[dict],
    dtype: str,
    device: torch.device,
    peaks: Peaks,
) -> None:
    """Run identity, notes and the roofline columns (against this run's `peaks`) into each row."""
    by_label = {shape_label(s): s for s in shapes}
    itemsize = torch.empty(0, dtype=common.dtype_of(dtype)).element_size()
    ident = common.run_identity(device)
    for r in rows:
        r.update(ident)
        if r["provider"] == "compile" and args.compile_backend != "inductor":
            r["note"] = f"torch.compile backend {args.compile_backend}"
        s = by_label.get(r["shape"])
        if s is None or r.get("status") != "ok":
            continue
        gif = any(p.grad_in_forward for p in bench.providers if p.name == r["provider"])
        model_less = gif and r["mode"] == "backward"  # its backward only rescales stored gradients
        fl = 0 if model_less else bench.flops(s, r["mode"])
        nb = 0 if model_less else bench.nbytes(s, r["mode"], itemsize)
        r.update(roofline(fl, nb, float(r["ms_median"]), bench.bound, peaks))


def profile_all(
    bench: OpBench, module: str, providers: list[str], shape: dict, modes: list[str], dtype: str, device: torch.device
) -> int:
    """--profile: a trace and a top-kernel table per provider (benchmarks/profiling.py)."""
    table = {p.name: p for p in bench.providers}
    modes = [m for m in modes if m in shape.get("modes", common.MODES)]
    print(f"[{bench.op}] profiling {shape_label(shape)} ({dtype}), modes {', '.join(modes)}", flush=True)
    commands: list[str] = []
    for name in providers:
        torch.manual_seed(0)
        inputs = bench.make_inputs(shape, common.dtype_of(dtype), device)
        call = table[name].make(shape)
        calls = [(m, *_fn_before(mode_call(call, inputs, m))) for m in modes]
        kernels = profiling.profile_provider(bench.op, name, calls, device)
        if device.type == "cuda":
            commands += profiling.gpu_commands(bench.op, module, name, kernels)
    if commands:
        print(f"[{bench.op}] per-kernel profiling commands (run on this GPU):")
        print("\n".join(f"  {c}" for c in commands))
    return 0


def _fn_before(m: ModeCall) -> tuple[Callable[[], object], Callable[[], None]]:
    return m.fn, m.before


def print_table(rows: list[dict]) -> None:
    """A short human table: time, spread, memory, achieved rate and % of the run's peak."""
    print(
        f"{'provider':>12} {'mode':>8} {'shape':<30} {'ms':>10} {'p20-p80':>17} {'MB':>9} "
        f"{'TFLOP/s':>8} {'GB/s':>8} {'%peak':>6}"
    )
    for r in rows:
        if r.get("status") != "ok":
            print(f"{r['provider']:>12} {r['mode']:>8} {r['shape']:<30} ERROR {r.get('note', '')}")
            continue
        spread = f"{float(r['ms_p20']):.3f}-{float(r['ms_p80']):.3f}"
        print(
            f"{r['provider']:>12} {r['mode']:>8} {r['shape']:<30} {float(r['ms_median']):>10.3f} {spread:>17} "
            f"{r['peak_mem_mb']!s:>9} {r.get('tflops', '')!s:>8} {r.get('gbps', '')!s:>8} "
            f"{r.get('pct_peak', '')!s:>6}"
        )
