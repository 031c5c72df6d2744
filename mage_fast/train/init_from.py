"""Training from a transformers LLaVA checkpoint, and the conversation template of a run.

``init_from`` may name a ``LlavaForConditionalGeneration`` folder: rank 0 imports it once into
``run_dir/llava_init`` (:func:`mage_fast.export.hf_llava.import_llava`), every rank then starts
from that export. The checkpoint defines the architecture (tower, ``mlp2x_gelu`` projector, LLM,
tokenizer): ``model.vision``/``aligner``/``llm`` of the run config are replaced by it, the kernels
and ``mse_lambda`` stay the run's. ``data.template: auto`` keeps the template ``init_from`` was
trained with (``vicuna_v1`` for LLaVA), else "default"; any other value is used as given.
"""

from __future__ import annotations

import dataclasses
import os

from mage_fast.export import pretrained
from mage_fast.export.hf_llava import import_llava, is_llava_dir
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import barrier


def prepare(cfg: TrainConfig, rank: int) -> None:
    """Point ``cfg.init_from`` at the imported export when it is a LLaVA folder (all ranks call it)."""
    if not is_llava_dir(cfg.init_from):
        return
    dst = os.path.join(cfg.run_dir, "llava_init")
    if rank == 0 and not os.path.isfile(os.path.join(dst, pretrained.CONFIG_NAME)):
        print(f"importing LLaVA checkpoint {cfg.init_from} -> {dst}", flush=True)
        import_llava(cfg.init_from, dst)
    barrier()
    saved = pretrained.read_config(dst)
    cfg.model = dataclasses.replace(saved, kernels=cfg.model.kernels, mse_lambda=cfg.model.mse_lambda)
    cfg.init_from = dst


def resolve_template(cfg: TrainConfig) -> None:
    """``model.template`` from ``data.template`` (after ``init_from`` has set the model config)."""
    if cfg.data.template != "auto":
        cfg.model.template = cfg.data.template
