"""Vision tower: HF CLIPVisionModel / SiglipVisionModel, from a local folder or a small config.

Layers after `select_layer` are dropped at build time (LLaVA reads hidden_states[-2]; the dropped
layer would cost compute and leave ZeRO-3 with parameters that never get a gradient).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import (
    AutoConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mage_fast.model.config import VisionConfig, hf_sizes

_MODELS = {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "vision_model", model)
    return inner.encoder.layers


def _hf_config(cfg: VisionConfig):
    if cfg.path is not None:
        hf = AutoConfig.from_pretrained(cfg.path)
        hf = getattr(hf, "vision_config", hf)  # a full CLIP/SigLIP folder: take its vision half
        kind = "siglip" if "siglip" in hf.model_type else "clip"
        return kind, hf
    conf_cls, _ = _MODELS[cfg.type]
    extra = {"vision_use_head": False} if cfg.type == "siglip" else {}
    hf = conf_cls(
        **hf_sizes(cfg),
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        **extra,
    )
    return cfg.type, hf


class VisionTower(nn.Module):
    """pixels (B_img, 3, S, S) → patch features V (B_img, g·g, C); CLS dropped (CLIP)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        kind, hf = _hf_config(cfg)
        _, model_cls = _MODELS[kind]
        hf._attn_implementation = "sdpa"
        if cfg.path is not None and os.path.isdir(cfg.path):
            self.tower, info = model_cls.from_pretrained(cfg.path, config=hf, output_loading_info=True)
            if info["missing_keys"]:  # HF would leave them random and only log a table
                raise ValueError(f"vision tower {cfg.path}: weights missing for {sorted(info['missing_keys'])[:8]}")
        else:
            self.tower = model_cls._from_config(hf)
        n = hf.num_hidden_layers
        keep = cfg.select_layer + n + 1 if cfg.select_layer < 0 else cfg.select_layer + 1
        if not 1 <= keep <= n:
            raise ValueError(f"model.vision.select_layer {cfg.select_layer} is outside a {n}-layer tower")
        layers = _encoder_layers(self.tower)
        del layers[keep:]
        self.tower.config.num_hidden_layers = keep
        # Unused by LLaVA-style features: keep them out of the optimizer and of ZeRO-3's reduce.
        for name in ("post_layernorm", "head"):
            mod = getattr(getattr(self.tower, "vision_model", self.tower), name, None)
            if mod is not None:
                mod.requires_grad_(False)
        self.kind = kind
        self.hidden_size = hf.hidden_size
        self.image_size = hf.image_size
        self.grid = hf.image_size // hf.patch_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values=pixel_values, output_hidden_states=True)
        feats = out.hidden_states[-1]  # output of the last kept layer, before any post-norm
        return feats[:, 1:] if self.kind == "clip" else feats
