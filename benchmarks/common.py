"""What every benchmark shares: device identity, timing, peak memory and the CSV.

* Timing: on CUDA `triton.testing.do_bench` (CUDA events as a fallback), on CPU a repeated wall
  clock; both give the median and the 20th/80th percentiles (the spread).
* Peak extra memory of one call: on CUDA the caching allocator's peak minus what was allocated
  before the call; on CPU the process's peak resident set (VmHWM, reset through
  /proc/self/clear_refs) minus its resident set before the call. Callers run each provider in its
  own process so one provider's heap does not colour another's figure.
* Roofline peaks and percentages: benchmarks/peaks.py.
* CSV: one row per (op, provider, mode, shape, dtype, device, commit, date); `date` is the UTC
  start of the run (`BENCH_DATE`, shared by every script of one `make bench`).
"""

from __future__ import annotations

import csv
import ctypes
import datetime
import gc
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from mage_fast.ops import device_class  # the class baselines.json and the CSV's `device` are keyed by

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
RESULTS_CSV = os.path.join(RESULTS_DIR, "results.csv")

KEY = ("op", "provider", "mode", "shape", "dtype", "device", "commit", "date")
COLUMNS = KEY + (
    "device_name",
    "ms_median",
    "ms_p20",
    "ms_p80",
    "reps",
    "first_ms",
    "peak_mem_mb",
    "mem_method",
    "flops",
    "bytes",
    "tflops",
    "gbps",
    "bound",
    "pct_peak",
    "peak_tflops",
    "peak_gbps",
    "tokens_per_s",
    "status",
    "note",
)
MODES = ("forward", "backward", "full")
# A child process prints each result row as this tag and the row's JSON; its parent collects them.
ROW_TAG = "@@ROW "


# -- identity --------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    """Human-readable device, with the CPU thread count (timings scale with it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def git_commit() -> str:
    """Short HEAD, with `-dirty` if tracked files outside benchmarks/results differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def run_date() -> str:
    """The run's UTC start time: $BENCH_DATE if set (one value for a whole `make bench`), else now."""
    env = os.environ.get("BENCH_DATE")
    if env:
        return env
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_identity(device: torch.device) -> dict[str, str]:
    """The CSV columns that name a run: device class and name, commit, date."""
    return {
        "device": device_class(device),
        "commit": git_commit(),
        "date": run_date(),
        "device_name": device_name(device),
    }


def dtype_of(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- timing ----------------------------------------------------------------------------------
@dataclass
class Timing:
    """Milliseconds per call: median and the 20th/80th percentiles over `reps` calls."""

    median: float
    p20: float
    p80: float
    reps: int


def summarize(samples_ms: list[float]) -> Timing:
    """Median and 20th/80th percentiles of the samples (min/max below 5 samples)."""
    s = sorted(samples_ms)
    if len(s) < 5:
        return Timing(statistics.median(s), s[0], s[-1], len(s))
    q = statistics.quantiles(s, n=10, method="inclusive")
    return Timing(statistics.median(s), q[1], q[7], len(s))


def time_call(
    fn: Callable[[], object],
    device: torch.device,
    *,
    before: Callable[[], None] | None = None,
    budget_s: float = 1.0,
    max_reps: int = 50,
    seed_ms: Iterable[float] = (),
    cuda_setup: bool = False,
) -> Timing:
    """Time `fn` (already warmed up), calling `before()` untimed before each call.

    CUDA: `triton.testing.do_bench` (warm-up 25 ms, 100 ms of calls, L2 flushed; `before` then
    runs inside the timed region, so it must be cheap, like resetting grads); with `cuda_setup`
    (a `before` that must stay untimed, e.g. building a graph to backpropagate) or without
    Triton, CUDA events around each call. CPU: wall clock per call until `budget_s` of samples or
    `max_reps` calls; `seed_ms` are samples already taken (the memory probe's call); at least one
    more call is made.
    """
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            cuda_setup = True
        if cuda_setup:
            return _time_cuda_events(fn, before, max_reps=100)

        def step() -> None:
            if before is not None:
                before()
            fn()

        med, p20, p80 = do_bench(step, quantiles=[0.5, 0.2, 0.8])
        return Timing(med, p20, p80, -1)  # -1: do_bench chose the count
    samples = list(seed_ms)
    while True:
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
        if sum(samples) >= budget_s * 1e3 or len(samples) >= max_reps:
            return summarize(samples)


def _time_cuda_events(fn: Callable[[], object], before: Callable[[], None] | None, max_reps: int) -> Timing:
    samples: list[float] = []
    for i in range(3 + max_reps):
        if before is not None:
            before()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        if i >= 3:  # three warm-up calls
            samples.append(a.elapsed_time(b))
        if sum(samples) > 1000.0:
            break
    return summarize(samples)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """One call, in milliseconds, synchronised."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1e3


# -- memory ----------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_heap() -> None:
    """Give freed heap pages back to the OS so the resident set is what is really live.
    (gc.freeze: later collections skip the survivors, so each probe's collection stays short.)"""
    gc.collect()
    gc.freeze()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_rss_reset() -> int:
    """Reset the peak resident set to the current one; return the current one in bytes."""
    _release_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # "5": reset VmHWM (Linux >= 4.0)
    return _proc_status_kb("VmRSS") * 1024


def cpu_peak_rss() -> int:
    """Peak resident set since the last `cpu_rss_reset`, in bytes."""
    return _proc_status_kb("VmHWM") * 1024


def memory_method(device: torch.device) -> str:
    return "cuda_allocator" if device.type == "cuda" else "peak_rss"


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, float]:
    """(peak bytes allocated by one call of `fn` beyond what was live before it, the call's ms)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        ms = timed(fn, device)
        return max(0, torch.cuda.max_memory_allocated(device) - base), ms
    base = cpu_rss_reset()
    ms = timed(fn, device)
    return max(0, cpu_peak_rss() - base), ms


# -- CSV -------------------------------------------------------------------------------------
def row_key(row: dict) -> tuple[str, ...]:
    """The identity of a row: (op, provider, mode, shape, dtype, device, commit, date)."""
    return tuple(str(row.get(k, "")) for k in KEY)


def append_rows(rows: list[dict], path: str = RESULTS_CSV) -> None:
    """Append rows (missing columns empty); writes the header to a new file. Unknown keys fail."""
    for r in rows:
        extra = set(r) - set(COLUMNS)
        if extra:
            raise ValueError(f"unknown CSV column(s) {sorted(extra)}")
        missing = [k for k in KEY if r.get(k) in (None, "")]
        if missing:
            raise ValueError(f"row lacks key column(s) {missing}: {r}")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})


def read_rows(path: str = RESULTS_CSV) -> list[dict]:
    """All rows; a later row with the same key replaces an earlier one (a re-run of one case)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[tuple[str, ...], dict] = {}
    for r in rows:
        latest[row_key(r)] = r
    return list(latest.values())


def latest_run(rows: list[dict], device: str | None = None, op: str | None = None) -> list[dict]:
    """Rows of the most recent run (largest `date`) per (op, device), optionally filtered."""
    rows = [r for r in rows if (device is None or r["device"] == device) and (op is None or r["op"] == op)]
    newest: dict[tuple[str, str], str] = {}
    for r in rows:
        k = (r["op"], r["device"])
        newest[k] = max(newest.get(k, ""), r["date"])
    return [r for r in rows if r["date"] == newest[(r["op"], r["device"])]]


def fmt_mb(nbytes: float | None) -> float | str:
    return "" if nbytes is None else round(nbytes / 2**20, 2)
