"""The training run: config → data → model under ZeRO-3 → steps → checkpoints → export.

`train()` is the outline; the step itself (forward, loss, backward, non-finite skip) lives in
`mage_fast.train.step`, which benchmarks/bench_step.py times.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from mage_fast.configtools import ConfigError, dump_yaml
from mage_fast.data.collator import Collator
from mage_fast.data.image import ImageTransform
from mage_fast.data.llava import LlavaDataset
from mage_fast.data.llava_conv import make_template
from mage_fast.data.tokens import ensure_special_tokens
from mage_fast.eval import write_answers
from mage_fast.export import pretrained
from mage_fast.train import checkpoint, ckpt_storage, llava_init, lora_export, resize, startup
from mage_fast.train.accuracy import AccuracyEval, converged
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    quiet_warnings,
    set_threads,
)
from mage_fast.train.engine import (
    apply_freeze,
    build_ds_config,
    build_model,
    export_state,
    initialize,
    load_part,
    optimizer_state_bytes,
    optimizer_updates,
    param_counts,
    param_shapes,
    step_probe,
    zero_stage,
)
from mage_fast.train.preempt import EXIT_PREEMPTED, StopRequest, pause_for_signal
from mage_fast.train.sampler import ResumableBatches
from mage_fast.train.step import StepResult, to_device, train_step


class NonFiniteError(RuntimeError):
    """`max_bad_steps` steps in a row had a non-finite loss or gradient norm."""


def _injections(world: int) -> tuple[dict[int, str], int]:
    """Fault injection for tests (documented in the README): MAGE_FAST_INJECT_NAN="3,5:grad" makes
    step 3's loss NaN and puts an Inf into step 5's reduced gradients, on rank
    MAGE_FAST_INJECT_RANK only (default: the last rank)."""
    spec = os.environ.get("MAGE_FAST_INJECT_NAN", "")
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        step, _, where = item.partition(":")
        if where not in ("", "loss", "grad"):
            raise ConfigError(f"MAGE_FAST_INJECT_NAN: {item!r} is not STEP, STEP:loss or STEP:grad")
        out[int(step)] = where or "loss"
    return out, int(os.environ.get("MAGE_FAST_INJECT_RANK", world - 1))


def _gather_ids(micro: list[dict], world: int) -> list[str]:
    return [i for ids in all_gather_objects([i for b in micro for i in b["ids"]], world) for i in ids]


_ARCH_SKIP = {"path", "attn_implementation", "select_layer", "num_layers"}


def _arch(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _ARCH_SKIP}


def resolve_model_config(cfg: TrainConfig) -> None:
    """Tokenizer path default, and `init_from`: the exported architecture, checked against ours."""
    if cfg.init_from:
        saved = pretrained.read_config(cfg.init_from)
        for part in ("vision", "aligner", "llm"):
            mine, theirs = dataclasses.asdict(getattr(cfg.model, part)), dataclasses.asdict(getattr(saved, part))
            diff = [k for k in _arch(theirs) if _arch(mine).get(k) != theirs[k]]
            if diff:
                k = diff[0]
                raise ConfigError(
                    f"init_from {cfg.init_from}: model.{part}.{k} is {mine[k]!r} here but {theirs[k]!r} "
                    f"in the exported model; make them equal"
                )
        cfg.model = dataclasses.replace(saved, kernels=cfg.model.kernels, mse_lambda=cfg.model.mse_lambda)
    if not cfg.model.tokenizer:
        guess = os.path.join(cfg.data.root, "tokenizer")
        cfg.model.tokenizer = guess if os.path.isdir(guess) else (cfg.model.llm.path or "")
    if not cfg.model.tokenizer:
        raise ConfigError("model.tokenizer is empty and neither <data.root>/tokenizer nor model.llm.path exists")


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)  # same init on every rank
    if deterministic:
        torch.use_deterministic_algorithms(True)


@torch.no_grad()
def eval_loss(engine, loader) -> float:
    """Token-weighted CE over a loader (every rank runs every batch: ZeRO-3 gathers per module)."""
    engine.eval()
    total, count = 0.0, 0
    for batch in loader:
        out = engine(**to_device(batch, engine.device))
        n = int(out["n_tokens"])
        total += float(out["ce"]) * n
        count += n
    engine.train()
    total, count = all_reduce_sum(total), all_reduce_sum(count)
    return total / max(count, 1.0)


@dataclass
class Run:
    """What a run builds once, before its first step."""

    cfg: TrainConfig
    rank: int
    world: int
    ds: dict
    engine: object
    tokenizer: object
    transform: ImageTransform
    data: LlavaDataset
    collate: Collator
    batches: ResumableBatches
    acc_eval: AccuracyEval | None
    hf_ds: object  # transformers' HfDeepSpeedConfig under ZeRO-3: it must outlive the engine
    resume_tag: str | None = None  # the verified checkpoint to resume, chosen before the engine exists
    universal: str | None = None  # its universal copy's folder when it has another world size
    storage: checkpoint.Storage = field(default_factory=checkpoint.Storage)  # who writes and checks which file


@dataclass
class Progress:
    """The run's position and non-finite counters: what a checkpoint carries besides the engine."""

    step: int = 0
    consumed: int = 0  # micro-batches taken from this rank's data order
    nonfinite: int = 0
    bad_run: list[int] = field(default_factory=list)  # the current run of skipped steps
    resumed_from: str | None = None

    def client_state(self, batches: ResumableBatches, world: int) -> dict:
        """What the checkpoint carries besides the engine. Every rank's RNG states go in
        (`rng_ranks`): ZeRO-2 writes the client state once, from rank 0, and ranks' torch RNGs
        differ once dropout has drawn for batches of other lengths."""
        rng = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
        data = batches.state(self.consumed)
        out = {"step": self.step, "data": data, "nonfinite": self.nonfinite, "bad_run": self.bad_run, "rng": rng}
        return {**out, "rng_ranks": all_gather_objects(rng, world)}

    def restore(self, client: dict, batches: ResumableBatches, rank: int, world: int) -> None:
        """Position, counters and this rank's RNG states (a checkpoint of another world size: the
        `rng` that resize.load re-derived)."""
        self.step, self.consumed = int(client["step"]), batches.check_state(client["data"])
        self.nonfinite, self.bad_run = int(client["nonfinite"]), list(client["bad_run"])
        ranks = client.get("rng_ranks") or []
        rng = ranks[rank] if len(ranks) == world else client["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])


def _write_config(cfg: TrainConfig, world: int) -> None:
    text = dump_yaml(cfg)
    print(f"# resolved config ({world} rank(s))\n{text}", flush=True)
    with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
        f.write(text)


def build_run(cfg: TrainConfig) -> Run:
    """Process group, seeds, tokenizer, the ZeRO engine, the data and its resumable order."""
    from transformers import AutoTokenizer

    rank, world, local_rank = init_distributed()
    set_threads(cfg.threads)
    seed_everything(cfg.seed, rank, cfg.deterministic)
    llava_init.prepare(cfg, rank)
    resolve_model_config(cfg)
    llava_init.resolve_template(cfg)
    os.makedirs(cfg.run_dir, exist_ok=True)
    if rank == 0:
        _write_config(cfg, world)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    image_id = ensure_special_tokens(tokenizer)
    ds = build_ds_config(cfg, world)
    node_local = bool(ds.get("checkpoint", {}).get("use_node_local_storage", False))
    storage = ckpt_storage.create(rank, world, local_rank, node_local)
    tag = checkpoint.resume_tag(cfg.run_dir, storage) if cfg.resume else None
    universal = resize.prepare(cfg.run_dir, tag, ds, world, rank, cfg.resume_resize)  # before initialize
    model, hf_ds = build_model(cfg, ds, len(tokenizer), image_id)
    if cfg.init_from:
        load_part(model.aligner, pretrained.aligner_state(cfg.init_from), "aligner")
    apply_freeze(model, cfg)
    engine = initialize(model, cfg, ds)
    transform = ImageTransform.from_pretrained_dir(cfg.model.vision.path, model.image_size)
    template = make_template(tokenizer, model.num_image_tokens, cfg.model.template)
    hooks = startup.dataset_hooks(cfg.run_dir, rank, world, cfg.data.num_workers)
    data = LlavaDataset.from_config(
        cfg.data, tokenizer, transform=transform, num_image_tokens=model.num_image_tokens, template=template, **hooks
    )
    if rank == 0:
        print(data.stats.summary(), flush=True)
    acc_eval = None
    if cfg.data.answers:
        path = os.path.join(cfg.data.root, cfg.data.answers)
        acc_eval = AccuracyEval(path, model, tokenizer, transform, limit=cfg.data.answers_limit)
    groups = (data.lengths, [bool(x) for x in data.images]) if cfg.data.group_by_length else None
    batches = ResumableBatches(len(data), cfg.micro_batch_size, rank, world, cfg.seed, groups)
    collate = Collator(tokenizer.pad_token_id, model.image_size, cfg.data.max_length if cfg.data.packing else None)
    return Run(
        cfg,
        rank,
        world,
        ds,
        engine,
        tokenizer,
        transform,
        data,
        collate,
        batches,
        acc_eval,
        hf_ds,
        tag,
        universal,
        storage,
    )


def resume(run: Run) -> Progress:
    """The newest verified checkpoint's progress (engine state loaded), or a fresh start."""
    prog = Progress()
    tag = run.resume_tag
    if tag:
        checkpoint.check_compatible(
            run.cfg.run_dir, tag, param_shapes(run.engine.module), run.world, resized=bool(run.universal)
        )
        if run.universal:
            client = resize.load(run.engine, run.cfg.run_dir, tag, run.universal, run.cfg.seed, run.rank)
        else:
            client = checkpoint.load(run.engine, run.cfg.run_dir, tag)
        prog.restore(client, run.batches, run.rank, run.world)
        prog.resumed_from = tag
        if run.rank == 0:
            print(f"resumed from {tag}: step {prog.step}", flush=True)
    return prog


class Logs:
    """Rank 0's sinks: history.jsonl (every step), TensorBoard and the progress bar (every
    `log_every` steps). Other ranks hold an inert instance."""

    def __init__(self, run: Run, prog: Progress) -> None:
        self.cfg, self.on = run.cfg, run.rank == 0
        self.t_last, self.tok_since = time.time(), 0.0
        if not self.on:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        d = run.cfg.run_dir
        self.writer = SummaryWriter(os.path.join(d, "tb"))
        self.bar = tqdm(total=run.cfg.max_steps, initial=prog.step, desc="train", dynamic_ncols=True, mininterval=2.0)
        self.hist = open(os.path.join(d, "history.jsonl"), "a", buffering=1)  # noqa: SIM115
        self.hist.write(json.dumps({"start": prog.step, "resumed_from": prog.resumed_from, "world_size": run.world}))
        self.hist.write("\n")

    def step(self, rec: dict, res: StepResult, prog: Progress, engine) -> None:
        self.tok_since += 0.0 if res.nonfinite else res.tokens
        if not self.on:
            return
        self.hist.write(json.dumps(rec) + "\n")
        self.bar.update(1)
        if rec["step"] % self.cfg.log_every and rec["step"] != self.cfg.max_steps:
            return
        tps = self.tok_since / max(time.time() - self.t_last, 1e-9)
        self.bar.set_postfix(loss=f"{res.loss:.4f}", ce=f"{res.ce:.4f}", mse=f"{res.mse:.4f}", tok_s=f"{tps:.0f}")
        for k, v in (("loss", res.loss), ("ce", res.ce), ("mse", res.mse), ("tokens_per_s", tps)):
            self.writer.add_scalar(f"train/{k}", v, rec["step"])
        self.writer.add_scalar("train/grad_norm", res.grad_norm, rec["step"])
        self.writer.add_scalar("train/nonfinite_steps", prog.nonfinite, rec["step"])
        for g in engine.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], rec["step"])
        self.t_last, self.tok_since = time.time(), 0.0

    def accuracy(self, step: int, acc: dict[str, float], done: bool) -> None:
        for k, v in acc.items():
            self.writer.add_scalar(f"eval/accuracy_{k}", v, step)
        line = f"step {step} held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        bar = self.cfg.early_stop_accuracy
        if bar:
            verdict = "converged, stopping early" if done else "not yet"
            line += f"; every type >= {bar} (early_stop_accuracy): {verdict}"
        self.bar.write(line)

    def close(self) -> None:
        if self.on:
            self.bar.close()
            self.hist.close()
            self.writer.close()


def _record(run: Run, prog: Progress, res: StepResult, micro: list[dict]) -> dict:
    """The step's history record; on a skipped step also the sample ids of every rank, and the
    non-finite counters move."""
    rec = {
        "step": prog.step,
        "loss": res.loss,
        "ce": res.ce,
        "mse": res.mse,
        "grad_norm": res.grad_norm,
        "wall": time.time(),
        "images_per_rank": res.images_per_rank,
    }
    if not res.nonfinite:
        prog.bad_run = []
        rec["updates"] = optimizer_updates(run.engine)
        return rec
    ids = _gather_ids(micro, run.world)
    prog.nonfinite += 1
    prog.bad_run.append(prog.step)
    rec.update(skipped=True, nonfinite=res.nonfinite, ids=ids, updates=optimizer_updates(run.engine))
    if run.rank == 0:
        print(
            f"non-finite {res.nonfinite} at step {prog.step} (loss {res.loss}, grad norm {res.grad_norm}): step "
            f"skipped on all ranks, no update ({len(prog.bad_run)} in a row, {prog.nonfinite} in all); "
            f"sample ids {ids}",
            flush=True,
        )
    return rec


def _check_bad_run(run: Run, prog: Progress, rec: dict) -> None:
    """Abort after `max_bad_steps` skipped steps in a row (once the last one is logged)."""
    bad = prog.bad_run
    if bad and len(bad) >= run.cfg.max_bad_steps:
        raise NonFiniteError(
            f"aborting: {len(bad)} non-finite steps in a row (steps {bad[0]}-{bad[-1]}, "
            f"max_bad_steps={run.cfg.max_bad_steps}); last sample ids {rec['ids']}. Lower optim.lr, check the "
            f"data of those ids, or resume from the last checkpoint"
        )


def _accuracy(run: Run, step: int, logs: Logs) -> dict:
    """Held-out exact match per qtype on data.answers (both ranks generate); appended to accuracy.jsonl.
    "converged": every type reached early_stop_accuracy (always false with it off)."""
    acc, answered = run.acc_eval.run(run.engine.module, run.rank, run.world)
    point = {"step": step, "accuracy": acc, "converged": converged(acc, run.cfg.early_stop_accuracy)}
    if run.rank == 0:
        write_answers(answered, os.path.join(run.cfg.run_dir, "answers_eval.jsonl"), f"step{step}")
        with open(os.path.join(run.cfg.run_dir, "accuracy.jsonl"), "a") as f:
            f.write(json.dumps(point) + "\n")
        logs.accuracy(step, acc, point["converged"])
    return point


def _save(run: Run, prog: Progress) -> None:
    meta = {"step": prog.step, "world_size": run.world, "shapes": param_shapes(run.engine.module)}
    client = prog.client_state(run.batches, run.world)
    checkpoint.save(run.engine, run.cfg.run_dir, prog.step, client, run.cfg.keep_last, run.storage, meta)


def _due(every: int, step: int, last: int) -> bool:
    return (every > 0 and step % every == 0) or step == last


def _loop(run: Run, prog: Progress, stop: StopRequest) -> tuple[list[dict], list[dict], bool]:
    """Steps until max_steps, a held-out check at early_stop_accuracy (checkpointed, then the
    final eval and export as at max_steps) or a stop signal -> (history, accuracy points, stopped
    by a signal)."""
    cfg = run.cfg
    logs, inject, inject_rank = Logs(run, prog), *_injections(run.world)
    loader = DataLoader(
        run.data,
        batch_sampler=run.batches.iter_from(prog.consumed),
        collate_fn=run.collate,
        num_workers=cfg.data.num_workers,
        # Its own generator: iter() draws the workers' base seed from it, not from the global RNG,
        # which a resumed run restores just before and dropout (LoRA's) then draws from.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    it, history, accuracy = iter(loader), [], []
    try:
        while prog.step < cfg.max_steps:
            micro = [next(it) for _ in range(cfg.grad_accum)]
            prog.consumed += cfg.grad_accum
            fault = inject.get(prog.step + 1) if run.rank == inject_rank else None
            res = train_step(run.engine, micro, run.rank, run.world, fault=fault, stop=stop.requested)
            prog.step += 1
            history.append(_record(run, prog, res, micro))
            if os.environ.get("MAGE_FAST_PROBE") == "1":
                history[-1].update(step_probe(run.engine))
            logs.step(history[-1], res, prog, run.engine)
            _check_bad_run(run, prog, history[-1])
            done = False
            if run.acc_eval is not None and _due(cfg.eval_every, prog.step, cfg.max_steps):
                accuracy.append(_accuracy(run, prog.step, logs))
                done = accuracy[-1]["converged"]
            if _due(cfg.save_every, prog.step, cfg.max_steps) or res.stop or done:
                _save(run, prog)
            pause_for_signal(prog.step, stop)
            if res.stop and prog.step < cfg.max_steps:
                return history, accuracy, True
            if done:
                break
    finally:
        logs.close()
    return history, accuracy, False


def _stopped(run: Run, prog: Progress, stop: StopRequest) -> None:
    if run.rank == 0:
        got = stop.signal or "a signal on another rank"
        print(
            f"stopping on {got}: checkpoint {checkpoint.tag_of(prog.step)} committed; exit {EXIT_PREEMPTED} "
            f"(run the same command to resume)",
            flush=True,
        )


def _eval_and_export(run: Run, summary: dict) -> None:
    cfg, rank, world = run.cfg, run.rank, run.world
    if cfg.data.eval:
        ev = LlavaDataset.from_config(
            cfg.data,
            run.tokenizer,
            transform=run.transform,
            num_image_tokens=run.engine.module.num_image_tokens,
            split="eval",
            image_check=startup.dataset_hooks(cfg.run_dir, rank, world, cfg.data.num_workers)["image_check"],
        )
        idx = list(range(rank, len(ev) - len(ev) % world, world))
        ev_loader = DataLoader(
            torch.utils.data.Subset(ev, idx), batch_size=cfg.micro_batch_size, collate_fn=run.collate
        )
        summary["eval_loss"] = eval_loss(run.engine, ev_loader)
        if rank == 0:
            print(f"eval loss {summary['eval_loss']:.6f}", flush=True)
    if cfg.export:
        state = export_state(run.engine.module)
        if rank == 0:
            out = os.path.join(cfg.run_dir, "export")
            pretrained.write_export(out, run.engine.module, run.tokenizer, state, run.transform)
            print(f"exported to {out}", flush=True)
    if cfg.export and cfg.lora.enable:  # the adapters alone besides the merged export
        out = os.path.join(cfg.run_dir, lora_export.ADAPTER_EXPORT)
        if lora_export.write_adapter_export(out, run.engine.module, run.tokenizer, rank) and rank == 0:
            print(f"adapter exported to {out}", flush=True)


def _summary(run: Run, prog: Progress, history: list[dict], accuracy: list[dict]) -> dict:
    st = run.data.stats
    skipped = {r: {"count": st.counts[r], "ids": st.ids[r]} for r in st.counts if st.counts[r]}
    if run.rank == 0:
        print(f"done: {prog.step} steps, {prog.nonfinite} non-finite skipped; data {st.summary()}", flush=True)
        for r, v in skipped.items():
            print(f"skipped {r}: {v['count']}, ids {v['ids']}", flush=True)
    barrier()  # every rank's late decode failures are in its log
    late = startup.late_failures(run.cfg.run_dir)
    for r, v in late.items() if run.rank == 0 else ():
        print(
            f"failed to decode in the loader ({r}): {len(v['ids'])}, ids {v['ids']}, replaced by {v['replaced_by']}",
            flush=True,
        )
    return {
        "step": prog.step,
        "world_size": run.world,
        "zero_stage": zero_stage(run.ds),
        "history": history,
        "accuracy": accuracy,
        "converged_at": next((p["step"] for p in accuracy if p["converged"]), None),
        "data": st.summary(),
        "data_skipped": skipped,
        "nonfinite_steps": prog.nonfinite,
        "preempted": None,
        "data_late": late,
        "params": param_counts(run.engine.module),
        "optimizer_state_bytes": optimizer_state_bytes(run.engine),
    }


def train(cfg: TrainConfig) -> dict:
    """The whole run; returns its summary (also run_dir/summary.json). After a stop signal the
    summary's `preempted` names it and there is no final eval or export (the entry point exits
    with EXIT_PREEMPTED)."""
    quiet_warnings()
    stop = StopRequest(cfg.stop_signals)
    try:
        run = build_run(cfg)
        prog = resume(run)
        history, accuracy, stopped = _loop(run, prog, stop)
        summary = _summary(run, prog, history, accuracy)
        if stopped:
            _stopped(run, prog, stop)
            summary["preempted"] = stop.signal or "another rank"
        else:
            _eval_and_export(run, summary)
        if run.rank == 0:
            with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f)
        barrier()
        return summary
    finally:
        stop.restore()
