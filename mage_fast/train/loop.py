"""The training run: config → data → model under ZeRO-3 → steps → checkpoints → export."""

from __future__ import annotations

import dataclasses
import json
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
from mage_fast.data.tokens import ensure_special_tokens
from mage_fast.model import pretrained
from mage_fast.train import checkpoint
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import all_reduce_sum, barrier, init_distributed, quiet_warnings, set_threads
from mage_fast.train.engine import (
    apply_freeze,
    build_ds_config,
    build_model,
    gathered_state,
    initialize,
    load_part,
    zero_stage,
)
from mage_fast.train.sampler import ResumableBatches

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


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _label_tokens(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


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
    resolve_model_config(cfg)
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
    data = LlavaDataset.from_config(cfg.data, tokenizer, transform=transform, num_image_tokens=model.num_image_tokens)
    if rank == 0:
        print(data.stats.summary(), flush=True)
    collate = Collator(tokenizer.pad_token_id, model.image_size)
    batches = ResumableBatches(len(data), cfg.micro_batch_size, rank, world, cfg.seed)

    step, consumed = 0, 0
    tag = checkpoint.newest(cfg.run_dir) if cfg.resume else None
    if tag:
        client = checkpoint.load(engine, cfg.run_dir, tag)
        step, consumed = int(client["step"]), batches.check_state(client["data"])
        torch.set_rng_state(client["rng"]["torch"])
        random.setstate(client["rng"]["python"])
        if rank == 0:
            print(f"resumed from {tag}: step {step}", flush=True)

    loader = DataLoader(data, batch_sampler=batches.iter_from(consumed), collate_fn=collate,
                        num_workers=cfg.data.num_workers)  # fmt: skip
    it = iter(loader)
    writer = bar = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        writer = SummaryWriter(os.path.join(cfg.run_dir, "tb"))
        bar = tqdm(total=cfg.max_steps, initial=step, desc="train", dynamic_ncols=True, mininterval=2.0)

    lam, gas = cfg.model.mse_lambda, cfg.grad_accum
    history: list[dict] = []
    t_last, tok_since = time.time(), 0.0
    while step < cfg.max_steps:
        micro = [next(it) for _ in range(gas)]
        consumed += gas
        # Exact accumulation: every micro-batch's CE is divided by the labelled tokens of the whole
        # step on all ranks; ×world undoes DeepSpeed's average over ranks, and no /gas (below).
        num_items = all_reduce_sum(sum(_label_tokens(b) for b in micro))
        ce_sum = mse_sum = 0.0
        for b in micro:
            out = engine(**_to(b, engine.device), num_items=max(int(num_items), 1))
            if not (torch.isfinite(out["ce"]) and torch.isfinite(out["mse"])):
                raise FloatingPointError(f"non-finite loss at step {step + 1} (ids {b['ids'][:4]}...)")
            engine.backward(out["ce"] * world + lam * out["mse"] / gas, scale_wrt_gas=False)
            ce_sum += float(out["ce"])
            mse_sum += float(out["mse"]) / gas
        engine.step()
        step += 1
        ce = all_reduce_sum(ce_sum)  # parts of one global mean
        mse = all_reduce_sum(mse_sum) / world
        tok_since += all_reduce_sum(sum(int(b["attention_mask"].sum()) for b in micro))
        history.append({"step": step, "loss": ce + lam * mse, "ce": ce, "mse": mse})
        if rank == 0:
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                dt = time.time() - t_last
                tps = tok_since / max(dt, 1e-9)
                bar.set_postfix(loss=f"{ce + lam * mse:.4f}", ce=f"{ce:.4f}", mse=f"{mse:.4f}", tok_s=f"{tps:.0f}")
                for k, v in (("loss", ce + lam * mse), ("ce", ce), ("mse", mse), ("tokens_per_s", tps)):
                    writer.add_scalar(f"train/{k}", v, step)
                for g in engine.optimizer.param_groups:
                    writer.add_scalar(f"lr/{g.get('name', 'group')}", g["lr"], step)
                t_last, tok_since = time.time(), 0.0
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            client = {"step": step, "data": batches.state(consumed),
                      "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}}  # fmt: skip
            checkpoint.save(engine, cfg.run_dir, step, client, cfg.keep_last, rank)
    if bar is not None:
        bar.close()

    summary: dict = {"step": step, "world_size": world, "history": history, "data": data.stats.summary()}
    if cfg.data.eval:
        ev = LlavaDataset.from_config(cfg.data, tokenizer, transform=transform,
                                      num_image_tokens=model.num_image_tokens, split="eval")  # fmt: skip
        idx = list(range(rank, len(ev) - len(ev) % world, world))
        ev_loader = DataLoader(torch.utils.data.Subset(ev, idx), batch_size=cfg.micro_batch_size, collate_fn=collate)
        summary["eval_loss"] = eval_loss(engine, ev_loader)
        if rank == 0:
            print(f"eval loss {summary['eval_loss']:.6f}", flush=True)
    if cfg.export:
        state = {part: gathered_state(mod) for part, mod in pretrained.export_parts(engine.module).items()}
        if rank == 0:
            pretrained.write_export(os.path.join(cfg.run_dir, "export"), engine.module, tokenizer, state)
            print(f"exported to {os.path.join(cfg.run_dir, 'export')}", flush=True)
    if rank == 0:
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f)
        writer.close()
    barrier()
    summary["zero_stage"] = zero_stage(ds)
    return summary
