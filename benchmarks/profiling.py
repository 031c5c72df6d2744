"""`--profile` of every bench script (shared by harness.main): a torch.profiler Chrome trace per
provider and the top kernels by time; on a GPU also the ncu / nsys command line for each of our
kernels that ran.

Each provider runs the first shape of the chosen sweep (default: smoke on CPU, the device's
sweep on a GPU) in this process: one warm-up call per mode, then PROFILED_CALLS calls under the
profiler. Traces go to runs/profile/<op>/<provider>.json (open in chrome://tracing or Perfetto).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import common

PROFILED_CALLS = 3
TOP = 10
# Kernels of ours (Triton and CUDA C++) by name: their launches get an ncu command line.
OUR_KERNELS = re.compile(r"(_gemm_kernel|patch_pool|ian_projection|ce_mse|colsum|layernorm|bias_gelu|gelu)")


def trace_dir(op: str) -> str:
    return os.path.join(common.ROOT, "runs", "profile", op)


def profile_provider(op: str, name: str, calls: list[tuple[str, Callable[[], object], Callable[[], None]]],
                     device: torch.device) -> list[str]:  # fmt: skip
    """Profile `calls` ((mode, fn, before) each warmed up once); write the trace, print the top
    kernels; returns the names of our kernels that ran."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for _, fn, before in calls:
        before()
        fn()
    common.sync(device)
    with profile(activities=acts, record_shapes=True) as prof:
        for _mode, fn, before in calls:
            for _ in range(PROFILED_CALLS):
                before()
                fn()
        common.sync(device)
    os.makedirs(trace_dir(op), exist_ok=True)
    path = os.path.join(trace_dir(op), f"{name}.json")
    prof.export_chrome_trace(path)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"[{op}] profile {name}: trace {os.path.relpath(path, common.ROOT)}; top {TOP} by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=TOP, max_name_column_width=60))
    events = prof.key_averages()
    return sorted({e.key for e in events if OUR_KERNELS.search(e.key) and device.type == "cuda"})


def gpu_commands(op: str, module: str, provider: str, kernels: list[str]) -> list[str]:
    """The nsys line for the provider and one ncu line per kernel of ours."""
    run = f"{shlex.quote(sys.executable)} -m {module} --providers {provider} --isolate none --csv ''"
    out = os.path.join("runs", "profile", op)
    lines = [f"nsys profile -t cuda,nvtx -o {out}/{provider} {run}"]
    for k in kernels:
        short = re.sub(r"[^A-Za-z0-9_]", "_", k)[:40]
        lines.append(f"ncu --set full --kernel-name regex:{shlex.quote(re.escape(k[:60]))} --launch-count 1 "
                     f"-o {out}/{provider}-{short} {run}")  # fmt: skip
    return lines
