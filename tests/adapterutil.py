"""The adapter launch tests' model side (LoRA and QLoRA): the base export a run starts from, and
the probe batch whose logits compare a trained model with its exports."""

from __future__ import annotations

import torch
from launchutil import TINY

from mage_fast.configtools import load_config
from mage_fast.export import pretrained
from mage_fast.model.mllm import MageModel
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import export_state

# The model of the adapter runs and of the base export they start from: the tiny model with the
# mlp2x_gelu aligner (LLaVA's, so the merged export also loads as a LLaVA folder).
MODEL = [*TINY, "model.aligner.type=mlp2x_gelu"]


def write_base_export(out: str, tokenizer, overrides: list[str]) -> str:
    """A random-init model of `overrides` (seed 0) written as the export at `out`: the "stage 1"
    model an adapter run starts from."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, None, overrides)
    model = MageModel(cfg.model, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    pretrained.write_export(out, model, tokenizer, export_state(model))
    return out


def probe_inputs(model: MageModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of <bos>, the image tokens, four text ids: ids (2, T) and pixels (2, 3, S, S)."""
    g = torch.Generator().manual_seed(1)
    image = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tokenizer.bos_token_id, *[image] * model.num_image_tokens, 7, 8, 9, 10]] * 2)
    return ids, torch.randn(2, 3, model.image_size, model.image_size, generator=g)


@torch.no_grad()
def probe_logits(model: MageModel, ids: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """The LLM's logits (2, T, V) on the embedded probe batch, one image per row."""
    embeds, _ = model.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    return model.llm(inputs_embeds=embeds).logits
