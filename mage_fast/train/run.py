"""Building a run once, before its first step: process group, seeds, config, tokenizer, the ZeRO
engine, the data and its resumable order; then the checkpoint to resume from, if any."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from transformers import AutoTokenizer

from mage_fast.configtools import dump_yaml
from mage_fast.data.collator import Collator
from mage_fast.data.image import ImageTransform
from mage_fast.data.llava import LlavaDataset
from mage_fast.data.llava_conv import make_template
from mage_fast.data.tokens import ensure_special_tokens
from mage_fast.train import checkpoint, ckpt_storage, init_from, resize, startup
from mage_fast.train.accuracy import AccuracyEval
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import init_distributed, set_threads
from mage_fast.train.engine import apply_freeze, build_ds_config, build_model, initialize, param_shapes
from mage_fast.train.progress import Progress, seed_everything
from mage_fast.train.sampler import ResumableBatches


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


def _write_config(cfg: TrainConfig, world: int) -> None:
    text = dump_yaml(cfg)
    print(f"# resolved config ({world} rank(s))\n{text}", flush=True)
    with open(os.path.join(cfg.run_dir, "config.yaml"), "w") as f:
        f.write(text)


def _build_engine(cfg: TrainConfig, rank: int, world: int, local_rank: int, tokenizer, image_id: int) -> tuple:
    """The DeepSpeed config, checkpoint storage, the resume choice (before `initialize`: a
    checkpoint of another world size is converted first) and the engine -> (the module the
    engine wraps, Run's fields ds, engine, hf_ds, storage, resume_tag, universal)."""
    ds = build_ds_config(cfg, world)
    node_local = bool(ds.get("checkpoint", {}).get("use_node_local_storage", False))
    storage = ckpt_storage.create(rank, world, local_rank, node_local)
    tag = checkpoint.resume_tag(cfg.run_dir, storage) if cfg.resume else None
    universal = resize.prepare(cfg.run_dir, tag, ds, world, rank, cfg.resume_resize)
    model, hf_ds = build_model(cfg, ds, len(tokenizer), image_id)
    init_from.load_weights(model, cfg)
    apply_freeze(model, cfg)
    engine = initialize(model, cfg, ds)
    return model, dict(ds=ds, engine=engine, hf_ds=hf_ds, storage=storage, resume_tag=tag, universal=universal)


def _build_data(cfg: TrainConfig, rank: int, world: int, model, tokenizer) -> dict:
    """Run's fields transform, data, acc_eval (held-out accuracy or None), batches (the resumable
    order) and collate."""
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
    return dict(transform=transform, data=data, acc_eval=acc_eval, batches=batches, collate=collate)


def build_run(cfg: TrainConfig) -> Run:
    """Process group, seeds, the resolved config (written to run_dir/config.yaml), tokenizer,
    the ZeRO engine, the data and its resumable order."""
    rank, world, local_rank = init_distributed()
    set_threads(cfg.threads)
    seed_everything(cfg.seed, rank, cfg.deterministic)
    init_from.resolve(cfg, rank)
    os.makedirs(cfg.run_dir, exist_ok=True)
    if rank == 0:
        _write_config(cfg, world)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.tokenizer)
    image_id = ensure_special_tokens(tokenizer)
    model, engine_fields = _build_engine(cfg, rank, world, local_rank, tokenizer, image_id)
    data_fields = _build_data(cfg, rank, world, model, tokenizer)
    return Run(cfg=cfg, rank=rank, world=world, tokenizer=tokenizer, **engine_fields, **data_fields)


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
