"""Adapter exports (:mod:`mage_fast.train.lora_export`) read back: the base model its config names,
the LoRA adapters loaded onto it by peft, the trained parts' weights."""

from __future__ import annotations

import json
import os

import torch

from mage_fast.configtools import from_dict
from mage_fast.data.tokens import ensure_special_tokens
from mage_fast.export.pretrained import CONFIG_NAME
from mage_fast.model import qlora
from mage_fast.model.config import ModelConfig
from mage_fast.model.lora import ADAPTER
from mage_fast.model.mllm import MageModel


def load_adapter_export(model_dir: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from an adapter export (mage_fast.train.lora_export): the MageModel built
    on the base folders its mage_config.json names, each adapter folder loaded by
    `PeftModel.from_pretrained` onto its base part (in place, unmerged), the trained aligner (and
    tower) loaded; a QLoRA export's LLM quantised to its 4-bit base first (quantize.json). Eval
    mode, CPU, for checks and eval (no DeepSpeed)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    with open(os.path.join(model_dir, CONFIG_NAME)) as f:
        cfg = from_dict(ModelConfig, json.load(f))
    tok = AutoTokenizer.from_pretrained(os.path.join(model_dir, "tokenizer"))
    model = MageModel(cfg, len(tok), ensure_special_tokens(tok))
    quantize = os.path.join(model_dir, qlora.QUANTIZE_NAME)
    if os.path.isfile(quantize):
        with open(quantize) as f:
            qlora.quantize_llm(model.llm, getattr(torch, json.load(f)["compute_dtype"]))
    for part, module in (("llm", model.llm), ("vision_tower", model.vision_tower.tower)):
        folder = os.path.join(model_dir, part)
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            PeftModel.from_pretrained(module, folder, adapter_name=ADAPTER)  # injects into `module`
        elif part == "vision_tower" and os.path.isdir(folder):
            module.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    model.aligner.load_state_dict(load_file(os.path.join(model_dir, "aligner", "model.safetensors")))
    return model.to(dtype=dtype).eval(), tok
