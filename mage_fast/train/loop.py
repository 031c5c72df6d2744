"""The training run: config → data → model under ZeRO-3 → steps → checkpoints → export."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time

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
from mage_fast.model import pretrained
from mage_fast.train import checkpoint, llava_init
from mage_fast.train.accuracy import AccuracyEval
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import (
    all_gather_objects,
    all_reduce_sum,
    all_reduce_vec,
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
    grad_sumsq,
    initialize,
    load_part,
    local_grads,
    optimizer_updates,
    param_shapes,
    skip_step,
    zero_stage,
)
from mage_fast.train.sampler import ResumableBatches


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


def check_paths(cfg: TrainConfig) -> None:
    """Every file and folder the run reads must exist: one `ConfigError` line naming the key,
    before any rank builds a model (not a traceback from deep inside transformers or DeepSpeed).
    The `mage_fast.train` entry calls it on every rank before `train`."""
    d = cfg.data
    need = [("deepspeed", cfg.deepspeed, os.path.isfile), ("data.train", os.path.join(d.root, d.train), os.path.isfile)]
    if d.eval:
        need.append(("data.eval", os.path.join(d.root, d.eval), os.path.isfile))
    if d.answers:
        need.append(("data.answers", os.path.join(d.root, d.answers), os.path.isfile))
    for key, value in (("init_from", cfg.init_from), ("model.vision.path", cfg.model.vision.path),
                       ("model.llm.path", cfg.model.llm.path), ("model.tokenizer", cfg.model.tokenizer)):  # fmt: skip
        if value:
            need.append((key, value, os.path.isdir))
    for key, path, exists in need:
        if not exists(path):
            what = "file" if exists is os.path.isfile else "folder (models load from local folders; no hub)"
            raise ConfigError(f"{key}: {path!r} is not a {what}")


def seed_everything(seed: int, rank: int, deterministic: bool) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)  # same init on every rank
    if deterministic:
        torch.use_deterministic_algorithms(True)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _label_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def _captioned(batch: dict) -> int:
    """Images of the batch with a caption (the ones the MSE term averages over)."""
    return int(batch["caption_mask"].any(1).sum())


@torch.no_grad()
def eval_loss(engine, loader) -> float:
    """Token-weighted CE over a loader (every rank runs every batch: ZeRO-3 gathers per module)."""
    engine.eval()
    total, count = 0.0, 0
    for batch in loader:
        out = engine(**_to(batch, engine.device))
        n = int(out["n_tokens"])
        total += float(out["ce"]) * n
        count += n
    engine.train()
    total, count = all_reduce_sum(total), all_reduce_sum(count)
    return total / max(count, 1.0)


def train(cfg: TrainConfig) -> dict:
    quiet_warnings()
    rank, world, _ = init_distributed()
    set_threads(cfg.threads)
    seed_everything(cfg.seed, rank, cfg.deterministic)
    llava_init.prepare(cfg, rank)
    resolve_model_config(cfg)
    llava_init.resolve_template(cfg)
    os.makedirs(cfg.run_dir, exist_ok=True)
    if rank == 0:
        text = dump_yaml(cfg)
        print(f"# resolved config ({world} rank(s))\n{text}", flush=True)
        with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
            f.write(text)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    image_id = ensure_special_tokens(tokenizer)
    ds = build_ds_config(cfg, world)
    model, _hf_ds = build_model(cfg, ds, len(tokenizer), image_id)
    if cfg.init_from:
        load_part(model.aligner, pretrained.aligner_state(cfg.init_from), "aligner")
    apply_freeze(model, cfg)
    engine = initialize(model, cfg, ds)

    transform = ImageTransform.from_pretrained_dir(cfg.model.vision.path, model.image_size)
    template = make_template(tokenizer, model.num_image_tokens, cfg.model.template)
    data = LlavaDataset.from_config(cfg.data, tokenizer, transform=transform, num_image_tokens=model.num_image_tokens,
                                    template=template)  # fmt: skip
    if rank == 0:
        print(data.stats.summary(), flush=True)
    collate = Collator(tokenizer.pad_token_id, model.image_size)
    acc_eval = None
    if cfg.data.answers:
        acc_eval = AccuracyEval(os.path.join(cfg.data.root, cfg.data.answers), model, tokenizer, transform,
                                limit=cfg.data.answers_limit)  # fmt: skip
    batches = ResumableBatches(len(data), cfg.micro_batch_size, rank, world, cfg.seed)

    step, consumed, nonfinite, bad_run = 0, 0, 0, []
    tag = None
    if cfg.resume:
        if rank == 0:
            for gone in checkpoint.remove_incomplete(cfg.run_dir):
                print(f"removed incomplete checkpoint {gone} (no {checkpoint.MARKER} marker)", flush=True)
        barrier()
        tag = checkpoint.newest(cfg.run_dir)
    if tag:
        checkpoint.check_compatible(cfg.run_dir, tag, param_shapes(engine.module), world)
        client = checkpoint.load(engine, cfg.run_dir, tag)
        step, consumed = int(client["step"]), batches.check_state(client["data"])
        nonfinite, bad_run = int(client.get("nonfinite", 0)), list(client.get("bad_run", []))
        torch.set_rng_state(client["rng"]["torch"])
        random.setstate(client["rng"]["python"])
        if "numpy" in client["rng"]:
            np.random.set_state(client["rng"]["numpy"])
        if rank == 0:
            print(f"resumed from {tag}: step {step}", flush=True)

    loader = DataLoader(data, batch_sampler=batches.iter_from(consumed), collate_fn=collate,
                        num_workers=cfg.data.num_workers)  # fmt: skip
    it = iter(loader)
    writer = bar = hist = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        writer = SummaryWriter(os.path.join(cfg.run_dir, "tb"))
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0)
        hist = open(os.path.join(cfg.run_dir, "history.jsonl"), "a", buffering=1)  # noqa: SIM115
        hist.write(json.dumps({"start": step, "resumed_from": tag, "world_size": world}) + "\n")

    lam, gas = cfg.model.mse_lambda, cfg.grad_accum
    inject, inject_rank = _injections(world)
    history: list[dict] = []
    accuracy: list[dict] = []  # held-out exact match per qtype (data.answers), also in accuracy.jsonl
    t_last, tok_since = time.time(), 0.0
    while step < cfg.max_steps:
        micro = [next(it) for _ in range(gas)]
        consumed += gas
        # Exact accumulation: every micro-batch's CE is divided by the labelled tokens of the whole
        # step on all ranks; ×world undoes DeepSpeed's average over ranks, and no /gas (below).
        # The MSE likewise: each micro-batch's mean over its captioned images is weighted by its
        # share of the step's captioned images, so the step optimises the mean over all of them
        # (a rank or micro-batch without captions does not dilute λ).
        caps = [_captioned(b) for b in micro]
        num_items, num_caps = all_reduce_vec([sum(_label_tokens(b) for b in micro), sum(caps)])
        num_caps = max(num_caps, 1.0)
        fault = inject.get(step + 1) if rank == inject_rank else None
        ce_sum = mse_sum = 0.0
        loss_bad = False
        for i, b in enumerate(micro):
            engine.set_gradient_accumulation_boundary(i == gas - 1)
            out = engine(**_to(b, engine.device), num_items=max(int(num_items), 1))
            ce_t, mse_t = out["ce"], out["mse"]
            if fault == "loss":
                ce_t = ce_t * float("nan")
            loss_bad |= not bool(torch.isfinite(ce_t) and torch.isfinite(mse_t))
            share = caps[i] / num_caps
            engine.backward(ce_t * world + lam * mse_t * (share * world), scale_wrt_gas=False)
            ce_sum += float(ce_t.detach())
            mse_sum += float(mse_t.detach()) * share
        if fault == "grad":
            with torch.no_grad():
                local_grads(engine)[0].view(-1)[0] = float("inf")
        # One collective for the step's decision and its logs, so every rank decides the same.
        images = [0.0] * world
        images[rank] = float(sum(int(b["image_counts"].sum()) for b in micro))
        tokens = float(sum(int(b["attention_mask"].sum()) for b in micro))
        red = all_reduce_vec([grad_sumsq(engine), float(loss_bad), ce_sum, mse_sum, tokens, *images])
        grad_norm, ce, mse = math.sqrt(red[0]) if red[0] >= 0 else math.nan, red[2], red[3]
        step += 1
        loss = ce + lam * mse
        rec = {"step": step, "loss": loss, "ce": ce, "mse": mse, "grad_norm": grad_norm, "wall": time.time(),
               "images_per_rank": [int(x) for x in red[5:]]}  # fmt: skip
        if red[1] > 0 or not math.isfinite(grad_norm):
            ids = _gather_ids(micro, world)
            skip_step(engine)
            nonfinite += 1
            bad_run.append(step)
            what = "loss" if red[1] > 0 else "gradient norm"
            rec.update(skipped=True, nonfinite=what, ids=ids)
            if rank == 0:
                print(
                    f"non-finite {what} at step {step} (loss {loss}, grad norm {grad_norm}): step skipped on all "
                    f"ranks, no update ({len(bad_run)} in a row, {nonfinite} in all); sample ids {ids}",
                    flush=True,
                )
        else:
            engine.step()
            bad_run = []
            tok_since += red[4]
        rec["updates"] = optimizer_updates(engine)
        history.append(rec)
        if rank == 0:
            hist.write(json.dumps(rec) + "\n")
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt = time.time() - t_last
                tps = tok_since / max(dt, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}", ce=f"{ce:.4f}", mse=f"{mse:.4f}", tok_s=f"{tps:.0f}")
                for k, v in (("loss", loss), ("ce", ce), ("mse", mse), ("tokens_per_s", tps), ("grad_norm", grad_norm)):
                    writer.add_scalar(f"train/{k}", v, step)
                writer.add_scalar("train/nonfinite_steps", nonfinite, step)
                for g in engine.optimizer.param_groups:
                    writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], step)
                t_last, tok_since = time.time(), 0.0
        if len(bad_run) >= cfg.max_bad_steps:
            raise NonFiniteError(
                f"aborting: {len(bad_run)} non-finite steps in a row (steps {bad_run[0]}-{bad_run[-1]}, "
                f"max_bad_steps={cfg.max_bad_steps}); last sample ids {rec['ids']}. Lower optim.lr, check the data "
                f"of those ids, or resume from the last checkpoint"
            )
        if acc_eval is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            acc, answered = acc_eval.run(engine.module, rank, world)
            accuracy.append({"step": step, "accuracy": acc})
            if rank == 0:
                write_answers(answered, os.path.join(cfg.run_dir, "answers_eval.jsonl"), f"step{step}")
                with open(os.path.join(cfg.run_dir, "accuracy.jsonl"), "a") as f:
                    f.write(json.dumps(accuracy[-1]) + "\n")
                for k, v in acc.items():
                    writer.add_scalar(f"eval/accuracy_{k}", v, step)
                bar.write(f"step {step} held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()))
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            client = {"step": step, "data": batches.state(consumed), "nonfinite": nonfinite, "bad_run": bad_run,
                      "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                              "numpy": np.random.get_state()}}  # fmt: skip
            meta = {"step": step, "world_size": world, "shapes": param_shapes(engine.module)}
            checkpoint.save(engine, cfg.run_dir, step, client, cfg.keep_last, rank, meta)
    if bar is not None:
        bar.close()
        hist.close()

    st = data.stats
    skipped = {r: {"count": st.counts[r], "ids": st.ids[r]} for r in st.counts if st.counts[r]}
    summary: dict = {"step": step, "world_size": world, "zero_stage": zero_stage(ds), "history": history,
                     "accuracy": accuracy,
                     "data": st.summary(),
                     "data_skipped": skipped, "nonfinite_steps": nonfinite}  # fmt: skip
    if rank == 0:
        print(f"done: {step} steps, {nonfinite} non-finite skipped; data {st.summary()}", flush=True)
        for r, v in skipped.items():
            print(f"skipped {r}: {v['count']}, ids {v['ids']}", flush=True)
    if cfg.data.eval:
        ev = LlavaDataset.from_config(cfg.data, tokenizer, transform=transform,
                                      num_image_tokens=model.num_image_tokens, split="eval")  # fmt: skip
        idx = list(range(rank, len(ev) - len(ev) % world, world))
        ev_loader = DataLoader(torch.utils.data.Subset(ev, idx), batch_size=cfg.micro_batch_size, collate_fn=collate)
        summary["eval_loss"] = eval_loss(engine, ev_loader)
        if rank == 0:
            print(f"eval loss {summary['eval_loss']:.6f}", flush=True)
    if cfg.export:
        state = export_state(engine.module)
        if rank == 0:
            pretrained.write_export(os.path.join(cfg.run_dir, "export"), engine.module, tokenizer, state, transform)
            print(f"exported to {os.path.join(cfg.run_dir, 'export')}", flush=True)
    if rank == 0:
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        writer.close()
    barrier()
    return summary
