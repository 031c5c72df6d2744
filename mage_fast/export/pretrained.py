"""The exported model folder: HF-style parts that `load_pretrained` reads back.

    DIR/mage_config.json        the ModelConfig (vision.select_layer rewritten: the saved tower
                                already ends at the selected layer)
    DIR/vision_tower/           config.json + model.safetensors  (HF CLIP/SigLIP vision model)
                                + preprocessor_config.json (the training pixel transform)
    DIR/aligner/model.safetensors
    DIR/llm/                    config.json + model.safetensors  (HF causal LM)
    DIR/tokenizer/              the tokenizer, with its <image> token

Written into a temporary sibling folder and renamed into place, so a reader never sees half.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import load_file, save_file

from mage_fast.configtools import from_dict
from mage_fast.data.image import ImageTransform
from mage_fast.data.tokens import ensure_special_tokens
from mage_fast.model.config import ModelConfig
from mage_fast.model.mllm import MageModel

CONFIG_NAME = "mage_config.json"


def export_parts(model: MageModel) -> dict[str, torch.nn.Module]:
    """The modules whose full state dicts `write_export` takes, by part name."""
    return {"vision_tower": model.vision_tower.tower, "aligner": model.aligner, "llm": model.llm}


def exported_config(model: MageModel) -> ModelConfig:
    cfg = dataclasses.replace(
        model.cfg,
        vision=dataclasses.replace(
            model.cfg.vision,
            path=None,
            select_layer=-1,
            num_layers=model.vision_tower.tower.config.num_hidden_layers,
        ),
        llm=dataclasses.replace(model.cfg.llm, path=None),
        tokenizer="",
    )
    return cfg


def write_export(
    out_dir: str,
    model: MageModel,
    tokenizer,
    state: dict[str, dict[str, torch.Tensor]],
    transform: ImageTransform | None = None,
) -> None:
    """Write the folder from full (gathered) state dicts of the parts: vision_tower, aligner, llm.
    `transform`: the pixel transform training used (default: CLIP's at the tower's size)."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(dataclasses.asdict(exported_config(model)), f, indent=1)
        model.vision_tower.tower.save_pretrained(os.path.join(tmp, "vision_tower"), state_dict=state["vision_tower"])
        (transform or ImageTransform(model.image_size)).save(os.path.join(tmp, "vision_tower"))
        os.makedirs(os.path.join(tmp, "aligner"))
        save_file(
            {k: v.contiguous() for k, v in state["aligner"].items()}, os.path.join(tmp, "aligner", "model.safetensors")
        )
        model.llm.save_pretrained(os.path.join(tmp, "llm"), state_dict=state["llm"])
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=".export-old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_config(model_dir: str) -> ModelConfig:
    """The ModelConfig of an exported folder, with part paths pointing into it."""
    path = os.path.join(model_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_dir} is not an exported mage-fast model (no {CONFIG_NAME})")
    with open(path) as f:
        cfg = from_dict(ModelConfig, json.load(f))
    cfg.vision.path = os.path.join(model_dir, "vision_tower")
    cfg.llm.path = os.path.join(model_dir, "llm")
    cfg.tokenizer = os.path.join(model_dir, "tokenizer")
    return cfg


def image_transform(model_dir: str, size: int) -> ImageTransform:
    """The pixel transform an exported model was trained with (its vision_tower/preprocessor_config.json;
    folders exported before it was written get CLIP's defaults at `size`)."""
    return ImageTransform.from_pretrained_dir(os.path.join(model_dir, "vision_tower"), size)


def aligner_state(model_dir: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(model_dir, "aligner", "model.safetensors"))


def load_pretrained(model_dir: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from an exported folder, for eval and chat (no DeepSpeed)."""
    from transformers import AutoTokenizer

    cfg = read_config(model_dir)
    tok = AutoTokenizer.from_pretrained(cfg.tokenizer)
    image_id = ensure_special_tokens(tok)
    model = MageModel(cfg, len(tok), image_id)
    model.aligner.load_state_dict(aligner_state(model_dir))
    return model.to(device=device, dtype=dtype).eval(), tok
