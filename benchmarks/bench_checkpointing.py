"""Gradient checkpointing on vs off: the memory one training forward + backward takes beyond the
model, and that the loss and gradients do not change.

    python -m benchmarks.bench_checkpointing [--config benchmarks/configs/step_tiny.yaml] [x=y ...]

Each setting runs in its own process: the model (MageModel, one process, no DeepSpeed: the
activations are what checkpointing changes, whatever ZeRO does with the weights) and one
synthetic batch of bench_step's config are built, the heap is trimmed and the peak resident set
reset, then one forward + backward runs; the row's peak_mem_mb is the peak minus the resident
set before the forward (on a GPU: the CUDA allocator's peak minus what was allocated before).
Rows: op "checkpointing", provider off | llm+vision, with the loss and gradient norm in the note
(equal between the two rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from benchmarks import bench_step, common
from benchmarks.common import ROW_TAG
from mage_fast.model.mllm import MageModel


def measure(config: str, overrides: list[str], on: bool, device: torch.device) -> dict:
    """One forward + backward with checkpointing `on` (LLM and tower) or off; the row."""
    cfg, sb = bench_step.load(config, overrides)
    torch.manual_seed(0)
    model = MageModel(cfg.model, sb.vocab_size, image_token_id=sb.vocab_size - 1).to(device)
    model.set_gradient_checkpointing(llm=on, vision=on)
    model.train()
    batch = bench_step.make_batch(model, sb, cfg.micro_batch_size, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = common.cpu_rss_reset()
    out = model(**batch)
    out["loss"].backward()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else common.cpu_peak_rss()
    grads = [p.grad.double().norm() ** 2 for p in model.parameters() if p.grad is not None]
    gnorm = float(torch.stack(grads).sum().sqrt())
    return {
        "op": "checkpointing",
        "provider": "llm+vision" if on else "off",
        "mode": "full",
        "dtype": "float32",
        "peak_mem_mb": common.fmt_mb(peak - base),
        "mem_method": common.memory_method(device) + "_increment",
        "status": "ok",
        "note": f"loss {float(out['loss']):.9f}; grad norm {gnorm:.9f}; one forward+backward, no DeepSpeed",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.path.join(bench_step.CONFIGS, "step_tiny.yaml"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default=common.RESULTS_CSV)
    p.add_argument("--child", choices=("on", "off"), default=None, help=argparse.SUPPRESS)
    p.add_argument("override", nargs="*", help="train.x=y or bench.x=y, e.g. bench.seq_len=256")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.child:
        print(ROW_TAG + json.dumps(measure(args.config, args.override, args.child == "on", device)), flush=True)
        return 0
    cfg, sb = bench_step.load(args.config, args.override)
    name = os.path.splitext(os.path.basename(args.config))[0].removeprefix("step_")
    shape = f"{name},B={cfg.micro_batch_size},L={sb.seq_len},llm_layers={cfg.model.llm.num_layers}"
    ident = {"shape": shape, **common.run_identity(device)}
    rows = []
    for flag in ("off", "on"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.bench_checkpointing",
            "--config",
            args.config,
            "--device",
            args.device,
            "--child",
            flag,
            *args.override,
        ]
        proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(ROW_TAG)]
        if proc.returncode != 0 or not found:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
            return 1
        rows.append({**json.loads(found[-1][len(ROW_TAG) :]), **ident})
        if args.override:
            rows[-1]["note"] += "; overrides " + " ".join(args.override)
        print(f"[checkpointing] {rows[-1]['provider']:>10}: +{rows[-1]['peak_mem_mb']} MB; {rows[-1]['note']}")
    if args.csv:
        common.append_rows(rows, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
