"""Full fine-tuning vs LoRA, side by side in one run: trainable parameters, optimizer-state bytes,
peak memory and step time, at the demo size and at a wider LLM.

    python -m benchmarks.bench_lora                     # CPU: demo + wide, full and lora
    python -m benchmarks.bench_lora --sizes demo --csv ''
    python -m benchmarks.bench_lora --device cuda --set train.bf16=true    # GPU rows (make gpu-check)

Each (size, mode) runs in its own process (its own peak memory), one rank, ZeRO-3 through
DeepSpeed on the real engine glue (`mage_fast.train.engine`), `warmup` then `steps` timed steps
of the training loop's own `train_step` on one synthetic batch (benchmarks.bench_step). `full` is
stage 2 as the demo trains it (tower frozen, aligner and LLM trained); `lora` is the same with
`lora.enable=true` (rank 16 on every linear layer of the LLM's blocks, the aligner fully trained).
Optimizer-state bytes: the fp32 master weights and AdamW moments DeepSpeed holds (all ranks);
peak memory: the process's whole peak over the timed steps (CUDA allocator, or resident set on
CPU). With LoRA the LM head is frozen, so ce_mse runs without its weight gradient: no (V, H)
fp32 buffer and no P^T h GEMM (the row's note gives the buffer's size). QLoRA (`qlora`:
lora.quantize=nf4, the LLM's block linears 4-bit NF4) runs under ZeRO-2 (refused under ZeRO-3),
so `lora_zero2` is LoRA under ZeRO-2 beside it; its note gives the 4-bit base's bytes. Without
bitsandbytes the `qlora` row is skipped with the reason. `--device cuda` where torch sees no GPU
is refused in one line. Each size's rows reach the CSV when that size is done (a run stopped by a
timeout keeps the sizes it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks import bench_step, common
from benchmarks.common import ROW_TAG
from mage_fast.model import qlora
from mage_fast.train.engine import optimizer_state_bytes, param_counts
from mage_fast.train.step import train_step

SIZES = {
    "demo": [],  # benchmarks/configs/step_tiny.yaml: the built-in demo's model
    "wide": [
        "train.model.llm.hidden_size=1024", "train.model.llm.intermediate_size=2816", "train.model.llm.num_layers=4",
        "train.model.llm.num_heads=16", "train.model.llm.num_kv_heads=16", "train.micro_batch_size=4",
        "bench.vocab_size=8192", "bench.warmup=1", "bench.steps=3",
    ],
}  # fmt: skip
SMOKE = ["train.micro_batch_size=4", "bench.seq_len=64", "bench.warmup=1", "bench.steps=2"]  # seconds, not figures
LORA = ["train.freeze_vision=true", "train.lora.enable=true"]
ZERO2 = ["train.deepspeed=configs/deepspeed/zero2.json"]
MODES = {
    "full": ["train.freeze_vision=true"],
    "lora": LORA,
    "lora_zero2": [*LORA, *ZERO2],
    "qlora": [*LORA, *ZERO2, "train.lora.quantize=nf4"],
}


def run_case(config: str, size: str, mode: str, device: torch.device, extra: list[str]) -> dict:
    """Build the engine for (size, mode) (`extra`: more overrides) and time its steps -> one CSV row."""
    cfg, sb = bench_step.load(config, [*SIZES[size], *MODES[mode], *extra])
    engine, model, _, world, _hf = bench_step._engine(cfg, sb, "kernels_on")
    batch = bench_step.make_batch(model, sb, cfg.micro_batch_size, engine.device)
    samples, peak, _ = bench_step._timed_steps(lambda: train_step(engine, [batch], 0, world), sb, device)
    t, n = common.summarize(samples), param_counts(engine.module)
    head = model.llm.get_output_embeddings().weight
    v, h = getattr(head, "ds_shape", head.shape)
    state = optimizer_state_bytes(engine)
    grad_w = "computed" if head.requires_grad else f"skipped (no {v}x{h} fp32 buffer, {v * h * 4 / 2**20:.1f} MiB)"
    held, weights = qlora.footprint(model.llm)
    base = f"; 4-bit base {held} B for {weights} weights (fp32 {4 * weights} B, bf16 {2 * weights} B)" if held else ""
    return {
        **bench_step.step_row("lora_step", mode, cfg, sb, t, peak, device, world),
        "note": f"trainable {n['trainable']} of {n['total']} params; optimizer state {state} B; "
        f"lm_head grad_weight {grad_w}; zero stage {engine.zero_optimization_stage()}{base}",
        "_facts": {"trainable": n["trainable"], "state": state, "peak": peak, "ms": t.median},
    }


def _spawn(args: argparse.Namespace, size: str, mode: str) -> dict:
    """One case in a child process: its row, or an error row."""
    cmd = [sys.executable, "-m", "benchmarks.bench_lora", "--config", args.config, "--device", args.device,
           "--child", f"{size}:{mode}", *(["--smoke"] if args.smoke else []),
           *(a for kv in args.set for a in ("--set", kv))]  # fmt: skip
    # The child is a world of its own: a process group of this process (bench_step's engine, run
    # earlier in the same smoke process) left RANK and MASTER_PORT set, and its store holds the port.
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["PYTHONWARNINGS"] = "ignore"
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(ROW_TAG)]
    if proc.returncode == 0 and found:
        return json.loads(found[-1][len(ROW_TAG) :])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
    return {"op": "lora_step", "provider": mode, "mode": "full", "dtype": "float32", "status": "error",
            "note": f"child exited with {proc.returncode}"}  # fmt: skip


def _case(args: argparse.Namespace, size: str, mode: str) -> dict:
    """The (size, mode) row; QLoRA's is skipped, with the reason, where its 4-bit base cannot be built."""
    reason = qlora.refusal("nf4", 2) if mode == "qlora" else None
    if reason:
        return {"op": "lora_step", "provider": mode, "mode": "full", "dtype": "float32", "status": "skipped",
                "note": reason}  # fmt: skip
    return _spawn(args, size, mode)


def _ratios(rows: dict[str, dict], mode: str, ref: str) -> str:
    """`mode` / `ref` of the facts, as one printed line (empty when either did not run)."""
    full, lo = rows.get(ref, {}).get("_facts"), rows.get(mode, {}).get("_facts")
    if not full or not lo:
        return ""
    r = {k: lo[k] / full[k] for k in ("trainable", "state", "peak", "ms")}
    return (
        f"{mode}/{ref}: trainable params {r['trainable']:.4f}, optimizer state {r['state']:.4f} "
        f"({full['state'] / 2**20:.1f} -> {lo['state'] / 2**20:.1f} MiB), peak memory {r['peak']:.3f} "
        f"({full['peak'] / 2**20:.0f} -> {lo['peak'] / 2**20:.0f} MiB), step time {r['ms']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Full fine-tuning vs LoRA: parameters, optimizer state, memory, time.")
    p.add_argument("--config", default=os.path.join(bench_step.CONFIGS, "step_tiny.yaml"))
    p.add_argument("--sizes", default="demo,wide")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="where the rows are appended ('' for nowhere)")
    p.add_argument("--smoke", action="store_true", help="tiny batch, 2 steps: that it runs (bench-smoke)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override for every case, e.g. train.bf16=true (repeatable)")  # fmt: skip
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device here")
    if args.child:
        size, mode = args.child.split(":")
        extra = [*(SMOKE if args.smoke else []), *args.set]
        print(ROW_TAG + json.dumps(run_case(args.config, size, mode, device, extra)), flush=True)
        return 0
    t0, out, errors = time.time(), [], 0
    ident = common.run_identity(device)
    for size in [s for s in args.sizes.split(",") if s]:
        rows = {mode: _case(args, size, mode) for mode in MODES}
        for mode, r in rows.items():
            r.update(ident, shape=f"{size}{',smoke' if args.smoke else ''}")
            errors += r["status"] == "error"
            print(f"[lora] {size:>4} {mode:>10}: {r.get('ms_median', '-')} ms/step, peak {r.get('peak_mem_mb', '-')} "
                  f"MB; {r['note']}", flush=True)  # fmt: skip
        for mode, ref in (("lora", "full"), ("qlora", "lora_zero2")):
            print(f"[lora] {size:>4} {_ratios(rows, mode, ref)}", flush=True)
        done = [{k: v for k, v in r.items() if k != "_facts"} for r in rows.values()]
        if args.csv:
            common.append_rows(done, args.csv)
        out += done
    print(f"[lora] {len(out)} row(s) -> {args.csv or '(not written)'} in {time.time() - t0:.0f} s", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
