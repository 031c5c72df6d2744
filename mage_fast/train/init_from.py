"""The run's model config: `init_from` (our export or a transformers LLaVA folder), tokenizer, template.

``init_from`` may name an exported model folder (stage 2 from stage 1): its architecture must
equal the run config's (``model.vision``/``aligner``/``llm``, paths and layer choices aside), and
the run starts from its weights. It may also name a ``LlavaForConditionalGeneration`` folder:
rank 0 imports it once into ``run_dir/llava_init`` (:func:`mage_fast.export.hf_llava.import_llava`),
every rank then starts from that export, and the checkpoint defines the architecture (tower,
``mlp2x_gelu`` projector, LLM, tokenizer). Either way ``model.vision``/``aligner``/``llm`` come
from the export; the kernels and ``mse_lambda`` stay the run's. ``data.template: auto`` keeps the
template ``init_from`` was trained with (``vicuna_v1`` for LLaVA), else "default"; any other value
is used as given.
"""

from __future__ import annotations

import dataclasses
import os

from mage_fast.configtools import ConfigError
from mage_fast.export import pretrained
from mage_fast.export.hf_llava import import_llava, is_llava_dir
from mage_fast.train.config import TrainConfig
from mage_fast.train.dist import barrier
from mage_fast.train.engine import load_part

# Fields that may differ from the export: where the weights live, how they are loaded, and how a
# part starts before its weights are loaded over it.
_ARCH_SKIP = {"path", "attn_implementation", "select_layer", "num_layers", "pos_init_std"}


def resolve(cfg: TrainConfig, rank: int) -> None:
    """`cfg.model` (and `cfg.init_from`) as the run uses them; every rank calls it, in step."""
    if is_llava_dir(cfg.init_from):
        cfg.init_from = _import_llava_once(cfg.init_from, os.path.join(cfg.run_dir, "llava_init"), rank)
    elif cfg.init_from:
        _check_architecture(cfg)
    if cfg.init_from:
        saved = pretrained.read_config(cfg.init_from)
        cfg.model = dataclasses.replace(saved, kernels=cfg.model.kernels, mse_lambda=cfg.model.mse_lambda)
    _resolve_tokenizer(cfg)
    if cfg.data.template != "auto":
        cfg.model.template = cfg.data.template


def load_weights(model, cfg: TrainConfig) -> None:
    """Start `model` from `cfg.init_from`'s aligner (after `resolve`; the tower and LLM load from
    the paths the resolved config names)."""
    if cfg.init_from:
        load_part(model.aligner, pretrained.aligner_state(cfg.init_from), "aligner")


def _import_llava_once(src: str, dst: str, rank: int) -> str:
    """Rank 0 imports the LLaVA folder `src` into `dst` unless done before; -> `dst`."""
    if rank == 0 and not os.path.isfile(os.path.join(dst, pretrained.CONFIG_NAME)):
        print(f"importing LLaVA checkpoint {src} -> {dst}", flush=True)
        import_llava(src, dst)
    barrier()
    return dst


def _arch(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in _ARCH_SKIP}


def _check_architecture(cfg: TrainConfig) -> None:
    """The exported model's architecture equals the run config's, part by part."""
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


def _resolve_tokenizer(cfg: TrainConfig) -> None:
    """`model.tokenizer` default: <data.root>/tokenizer if it exists, else the LLM's folder."""
    if not cfg.model.tokenizer:
        guess = os.path.join(cfg.data.root, "tokenizer")
        cfg.model.tokenizer = guess if os.path.isdir(guess) else (cfg.model.llm.path or "")
    if not cfg.model.tokenizer:
        raise ConfigError("model.tokenizer is empty and neither <data.root>/tokenizer nor model.llm.path exists")
