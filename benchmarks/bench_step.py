"""One training step of the whole stack (vision tower + aligner + LLM + CE/MSE, ZeRO-3 through
DeepSpeed), kernels on and off: tokens/s, step time, MFU and peak memory.

    python -m benchmarks.bench_step --config benchmarks/configs/step_tiny.yaml    # CPU
    python -m benchmarks.bench_step --config benchmarks/configs/step_1b.yaml      # a GPU

`kernels_on`: every op with backend "auto" (what `mage_fast.ops.backend_for` picks: on CPU cpp
for the ops whose cpp row is auto there, else torch; on a GPU the winner validated.json names,
else torch). `kernels_off`: every op with backend "torch" (the ops' pure-torch implementations,
which already chunk the loss: the model has no path that builds full logits).
Each setting runs in its own process (world of one; `deepspeed.initialize` on the real engine
glue of mage_fast.train.engine), `warmup` steps, then `steps` timed steps on one synthetic
batch, each the training loop's own `mage_fast.train.step.train_step` (normalisers, forward, the
op's loss backpropagated, the step's all-reduce and gradient norm, update).

MFU = model FLOPs per step / step time / the matmul peak measured in the same run (bf16 on
GPUs). Model FLOPs (PaLM's count, training = 3 x forward): 6 x (matmul parameters) per token
that passes them + 12 x layers x width x sequence per token for attention, for the tower (all
patches), the aligner (all patches: an upper bound) and the LLM (all positions); the lm_head
only on labelled tokens (the fused loss skips the rest). Peak memory: the process's whole peak
over the timed steps (CUDA allocator, or resident set on CPU), not an increment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import yaml

from benchmarks import common
from benchmarks.common import ROW_TAG
from benchmarks.peaks import Peaks, measure_peaks, roofline
from mage_fast.configtools import apply_overrides, from_dict
from mage_fast.labels import IGNORE_INDEX, loss_tokens
from mage_fast.model.config import KernelConfig
from mage_fast.ops import resolve
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import init_distributed, quiet_warnings
from mage_fast.train.engine import OptimizerTimer, apply_freeze, build_ds_config, build_model, initialize, zero_stage
from mage_fast.train.step import train_step

OPS = ("patch_pool", "ian_projection", "ce_mse")
SETTINGS = {"kernels_on": "auto", "kernels_off": "torch"}
CONFIGS = os.path.join(common.ROOT, "benchmarks", "configs")


@dataclass
class StepBench:
    """The synthetic batch and the step counts (the `bench` section of a step config)."""

    seq_len: int = 128
    vocab_size: int = 512
    caption_len: int = 16
    warmup: int = 2
    steps: int = 5


def load(path: str, overrides: list[str]):
    """(TrainConfig, StepBench) from a step config; `train.x=y` / `bench.x=y` overrides."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    apply_overrides(data, overrides)
    return from_dict(TrainConfig, data.get("train", {}), "train."), from_dict(
        StepBench, data.get("bench", {}), "bench."
    )


def make_batch(model, sb: StepBench, batch: int, device: torch.device) -> dict:
    """B samples of seq_len tokens: [bos, T image placeholders, text...], one image and one
    caption each; labels on the text only (ids and the image token drawn below vocab - 1)."""
    T, V, L = model.num_image_tokens, sb.vocab_size, sb.seq_len
    if L < T + 8:
        raise ValueError(f"bench.seq_len {L} is too short for {T} visual tokens + text")
    ids = torch.randint(1, V - 1, (batch, L))
    ids[:, 1 : 1 + T] = model.image_token_id
    labels = ids.clone()
    labels[:, : 1 + T] = IGNORE_INDEX
    s = model.image_size
    b = {
        "input_ids": ids,
        "attention_mask": torch.ones(batch, L, dtype=torch.long),
        "labels": labels,
        "pixel_values": torch.randn(batch, 3, s, s),
        "image_counts": torch.ones(batch, dtype=torch.long),
        "caption_ids": torch.randint(1, V - 1, (batch, sb.caption_len)),
        "caption_mask": torch.ones(batch, sb.caption_len, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in b.items()}


def _numel(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> int:
    """Parameters (full sizes under ZeRO-3) whose name contains none of `skip`."""
    return sum(getattr(p, "ds_numel", p.numel()) for n, p in module.named_parameters() if not any(s in n for s in skip))


def model_flops(model, batch: int, seq_len: int, labelled: int) -> float:
    """Training FLOPs of one step (see the module doc)."""
    llm, tower = model.llm, model.vision_tower
    d, n_layers = llm.config.hidden_size, llm.config.num_hidden_layers
    head = llm.get_output_embeddings().weight
    vocab = getattr(head, "ds_shape", head.shape)[0]
    body = _numel(llm, ("embed_tokens", "lm_head"))
    f = 6 * body * batch * seq_len + 12 * n_layers * d * seq_len * batch * seq_len + 6 * vocab * d * labelled
    patches = tower.grid**2 + (1 if tower.kind == "clip" else 0)
    tcfg = tower.tower.config
    f += 6 * _numel(tower, ("position_embedding",)) * batch * patches
    f += 12 * tcfg.num_hidden_layers * tower.hidden_size * patches * batch * patches
    f += 6 * _numel(model.aligner) * batch * tower.grid**2
    return float(f)


def _engine(cfg, sb: StepBench, setting: str):
    """(engine, model, ds config, world) with the setting's backends (a world of one)."""
    import logging

    quiet_warnings()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    _, world, _ = init_distributed()
    torch.manual_seed(0)
    cfg.model.kernels = KernelConfig(**{op: SETTINGS[setting] for op in OPS})
    ds = build_ds_config(cfg, world)
    model, hf = build_model(cfg, ds, sb.vocab_size, image_token_id=sb.vocab_size - 1)
    apply_freeze(model, cfg)
    return initialize(model, cfg, ds), model, ds, world, hf


def _timed_steps(step, sb: StepBench, device: torch.device) -> tuple[list[float], int, float]:
    """Warm-up, then `sb.steps` timed steps -> (ms per step, peak memory bytes, warm-up seconds)."""
    t0 = time.time()
    for _ in range(sb.warmup):
        step()
    warm = time.time() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        common.cpu_rss_reset()
    samples = [common.timed(step, device) for _ in range(sb.steps)]
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else common.cpu_peak_rss()
    return samples, peak, warm


def step_row(op: str, provider: str, cfg, sb: StepBench, t, peak: int, device: torch.device, world: int) -> dict:
    """The CSV fields of a whole-step row: timing `t` (common.summarize), the process's peak
    memory, tokens per second over all ranks."""
    return {
        "op": op,
        "provider": provider,
        "mode": "full",
        "dtype": "bfloat16" if cfg.bf16 else "float32",
        "ms_median": round(t.median, 3),
        "ms_p20": round(t.p20, 3),
        "ms_p80": round(t.p80, 3),
        "reps": t.reps,
        "peak_mem_mb": common.fmt_mb(peak),
        "mem_method": common.memory_method(device) + "_total",
        "tokens_per_s": round(cfg.micro_batch_size * sb.seq_len * world / (t.median / 1e3), 1),
        "status": "ok",
    }


def run_setting(cfg, sb: StepBench, setting: str, device: torch.device, peaks: Peaks | None) -> dict:
    """Build the engine with the setting's backends, run warmup + timed steps of the training
    loop's own `train_step`; one CSV row."""
    t0 = time.time()
    engine, model, ds, world, _hf = _engine(cfg, sb, setting)
    batch = make_batch(model, sb, cfg.micro_batch_size, engine.device)
    t1 = time.time()

    opt = OptimizerTimer(engine)  # the optimizer's share, reported apart (mean over all steps run)
    samples, peak, warm = _timed_steps(lambda: train_step(engine, [batch], 0, world), sb, device)
    t = common.summarize(samples)
    print(
        f"[step] {setting}: engine built in {t1 - t0:.1f} s, {sb.warmup} warm-up step(s) {warm:.1f} s, "
        f"{sb.steps} timed step(s) {sum(samples) / 1e3:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    flops = model_flops(model, cfg.micro_batch_size, sb.seq_len, loss_tokens(batch["labels"]))
    used = ",".join(f"{op}={resolve(op, SETTINGS[setting], device)}" for op in OPS)
    row = step_row("step", setting, cfg, sb, t, peak, device, world)
    row["note"] = (
        f"backends {used}; zero stage {zero_stage(ds)}; world {world}; "
        f"optimizer {opt.kind} {opt.ms / (sb.warmup + sb.steps):.2f} ms/step"
    )
    row.update(roofline(flops, 0, t.median, "compute", peaks))
    row.pop("gbps", None)
    return row


def _spawn(args: argparse.Namespace, setting: str, peaks: Peaks, dtype: str) -> dict:
    """Run one setting in a child process; its row, or an error row."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.bench_step",
        "--config",
        args.config,
        "--device",
        args.device,
        "--child",
        setting,
        *(["--threads", str(args.threads)] if args.threads else []),
        *args.override,
    ]
    env = dict(os.environ, BENCH_PEAKS=json.dumps(peaks.__dict__))
    env.setdefault("PYTHONWARNINGS", "ignore")
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
    found = [ln for ln in proc.stdout.splitlines() if ln.startswith(ROW_TAG)]
    if proc.returncode == 0 and found:
        sys.stderr.write("".join(ln + "\n" for ln in proc.stderr.splitlines() if ln.startswith("[step]")))
        return json.loads(found[-1][len(ROW_TAG) :])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
    return {
        "op": "step",
        "provider": setting,
        "mode": "full",
        "dtype": dtype,
        "status": "error",
        "note": f"child exited with {proc.returncode}",
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark one training step, kernels on and off.")
    p.add_argument("--config", default=None, help="default: configs/step_1b.yaml on CUDA, step_tiny.yaml on CPU")
    p.add_argument("--kernels", default="on,off", help="on, off or on,off")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--csv", default=common.RESULTS_CSV, help="where the rows are appended ('' for nowhere)")
    p.add_argument(
        "--isolate",
        choices=("setting", "none"),
        default="setting",
        help="a process per setting (default: its own peak memory) or all in this one",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 if a setting errored (the smoke run)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("override", nargs="*", help="train.x=y or bench.x=y, e.g. bench.steps=2")
    return p


def _report(rows: list[dict], ident: dict, args: argparse.Namespace) -> None:
    """Identify, print and append the rows."""
    for r in rows:
        r.update(ident)
        if args.override:
            r["note"] = (r.get("note", "") + "; overrides " + " ".join(args.override)).lstrip("; ")
        if r["status"] == "ok":
            print(
                f"[step] {r['provider']:>11}: {r['ms_median']:.1f} ms/step ({r['ms_p20']:.1f}-{r['ms_p80']:.1f}), "
                f"{r['tokens_per_s']:.0f} tokens/s, MFU {r.get('pct_peak', '-')} % of the measured matmul peak, "
                f"peak memory {r['peak_mem_mb']} MB; {r['note']}",
                flush=True,
            )
    if args.csv:
        common.append_rows(rows, args.csv)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = torch.device(args.device)
    if args.config is None:
        args.config = os.path.join(CONFIGS, "step_1b.yaml" if device.type == "cuda" else "step_tiny.yaml")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, sb = load(args.config, args.override)
    if args.child:
        peaks = Peaks(**json.loads(os.environ["BENCH_PEAKS"]))
        print(ROW_TAG + json.dumps(run_setting(cfg, sb, args.child, device, peaks)), flush=True)
        return 0

    t0 = time.time()
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    peaks = measure_peaks(device, dtype, small=sb.steps <= 2)
    name = os.path.splitext(os.path.basename(args.config))[0].removeprefix("step_")
    shape = f"{name},B={cfg.micro_batch_size},L={sb.seq_len}"
    print(
        f"[step] {shape} on {common.device_name(device)}; peaks: copy {peaks.gbps:.1f} GB/s, matmul "
        f"({peaks.matmul_dtype}) {peaks.tflops:.3f} TFLOP/s",
        flush=True,
    )
    rows = []
    for flag in [k for k in args.kernels.split(",") if k]:
        setting = f"kernels_{flag}"
        if setting not in SETTINGS:
            raise SystemExit(f"--kernels takes on/off, got {flag!r}")
        if args.isolate == "none":
            rows.append(run_setting(cfg, sb, setting, device, peaks))
            cfg, sb = load(args.config, args.override)  # run_setting sets cfg.model.kernels
        else:
            rows.append(_spawn(args, setting, peaks, str(dtype).replace("torch.", "")))
    ident = {"shape": shape, **common.run_identity(device)}
    _report(rows, ident, args)
    print(f"[step] {len(rows)} row(s) -> {args.csv or '(not written)'} in {time.time() - t0:.0f} s", flush=True)
    errors = sum(r["status"] != "ok" for r in rows)
    if errors:
        print(f"[step] WARNING: {errors} setting(s) errored (rows with status=error)", flush=True)
    return 1 if errors and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
