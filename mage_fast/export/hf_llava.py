"""LLaVA checkpoints in and out: transformers' ``LlavaForConditionalGeneration`` folders.

In (:func:`import_llava`): a LLaVA folder (e.g. llava-hf/llava-1.5-7b-hf) becomes a mage-fast
export folder (``pretrained``'s layout): its vision tower (full, with ``vision_feature_layer`` as
``select_layer``), ``multi_modal_projector`` as our ``mlp2x_gelu`` aligner (linear_1/linear_2 →
fc1/fc2), its language model with ``lm_head`` as a causal LM, its tokenizer and image processor,
and ``template: vicuna_v1`` (the prompt LLaVA-1.5 was trained with). ``init_from`` and the
benchmark runner call it on such folders.

Out (:func:`export_llava`): an ``mlp2x_gelu`` mage-fast export becomes a LLaVA folder that
``LlavaForConditionalGeneration.from_pretrained`` loads with the same logits: the saved tower
already ends at the selected layer, so ``vision_feature_layer = -1``; CLIP drops its CLS token
(``default`` strategy), SigLIP has none (``full``). IAN, sam, pool_mlp and linear aligners have no
LLaVA counterpart: ``python -m mage_fast.export`` writes them (and mlp2x_gelu) as a transformers
folder with its own code (docs/hf-export.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from safetensors.torch import save_file

from mage_fast.data.image import ImageTransform
from mage_fast.export.pretrained import CONFIG_NAME, image_transform, load_pretrained
from mage_fast.model.config import AlignerConfig, LLMConfig, ModelConfig, VisionConfig

_PROJ = {"linear_1": "fc1", "linear_2": "fc2"}  # LLaVA's projector names → our MLP's


def is_llava_dir(path: str | None) -> bool:
    """Whether ``path`` is a transformers LLaVA folder (config.json with model_type "llava")."""
    file = os.path.join(path or "", "config.json")
    if not path or not os.path.isfile(file):
        return False
    with open(file, encoding="utf-8") as f:
        return json.load(f).get("model_type") == "llava"


@contextmanager
def _staged(out_dir: str) -> Iterator[str]:
    """A temporary sibling folder renamed to ``out_dir`` when the block succeeds (readers never
    see half a folder); removed when it fails."""
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".llava-", dir=parent)
    try:
        yield tmp
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_importable(c) -> None:
    if c.projector_hidden_act != "gelu" or not getattr(c, "multimodal_projector_bias", True):
        raise ValueError(f"LLaVA projector {c.projector_hidden_act!r} without GELU+bias is not mlp2x_gelu")
    if not isinstance(c.vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer {c.vision_feature_layer!r}: only one feature layer maps to ours")
    kind = "siglip" if "siglip" in c.vision_config.model_type else "clip"
    want = "default" if kind == "clip" else "full"
    if c.vision_feature_select_strategy != want:
        raise ValueError(
            f"vision_feature_select_strategy {c.vision_feature_select_strategy!r} on a {kind} tower "
            f"is not ours ({want!r})"
        )


def _model_config(c) -> ModelConfig:
    """Our ModelConfig for a LLaVA config (part paths are filled in by ``pretrained.read_config``)."""
    v, t = c.vision_config, c.text_config
    vision = VisionConfig(
        type="siglip" if "siglip" in v.model_type else "clip", image_size=v.image_size, patch_size=v.patch_size,
        hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_layers=v.num_hidden_layers,
        num_heads=v.num_attention_heads, select_layer=c.vision_feature_layer,
    )  # fmt: skip
    llm = LLMConfig(
        arch="qwen2" if t.model_type == "qwen2" else "llama", hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads,
        num_kv_heads=t.num_key_value_heads, max_position_embeddings=t.max_position_embeddings,
    )  # fmt: skip
    return ModelConfig(vision=vision, aligner=AlignerConfig(type="mlp2x_gelu"), llm=llm, template="vicuna_v1")


def import_llava(src: str, out_dir: str) -> None:
    """Write the mage-fast export folder ``out_dir`` from the LLaVA folder ``src`` (dtype kept)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(src, dtype="auto")
    c = hf.config
    _check_importable(c)
    llm = AutoModelForCausalLM.from_config(c.text_config, dtype=hf.dtype)
    llm.model, llm.lm_head = hf.model.language_model, hf.lm_head
    proj = {
        f"{_PROJ[k.split('.')[0]]}.{k.split('.')[1]}": v.contiguous()
        for k, v in hf.model.multi_modal_projector.state_dict().items()
    }
    with _staged(out_dir) as tmp:
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(dataclasses.asdict(_model_config(c)), f, indent=1)
        hf.model.vision_tower.save_pretrained(os.path.join(tmp, "vision_tower"))
        ImageTransform.from_pretrained_dir(src, c.vision_config.image_size).save(os.path.join(tmp, "vision_tower"))
        os.makedirs(os.path.join(tmp, "aligner"))
        save_file(proj, os.path.join(tmp, "aligner", "model.safetensors"))
        llm.save_pretrained(os.path.join(tmp, "llm"))
        AutoTokenizer.from_pretrained(src).save_pretrained(os.path.join(tmp, "tokenizer"))


def llava_state(model) -> dict[str, torch.Tensor]:
    """A MageModel's (mlp2x_gelu) full state under LlavaForConditionalGeneration's key names."""
    sd = {f"model.vision_tower.{k}": v for k, v in model.vision_tower.tower.state_dict().items()}
    inv = {b: a for a, b in _PROJ.items()}
    sd |= {
        f"model.multi_modal_projector.{inv[k.split('.')[0]]}.{k.split('.')[1]}": v
        for k, v in model.aligner.state_dict().items()
    }
    for k, v in model.llm.state_dict().items():
        sd[k if k.startswith("lm_head.") else "model.language_model." + k.removeprefix("model.")] = v
    return sd


def llava_config(model):
    """The LlavaConfig of a MageModel whose aligner is mlp2x_gelu."""
    from transformers import LlavaConfig

    tower = model.vision_tower
    return LlavaConfig(
        vision_config=tower.tower.config.to_dict(), text_config=model.llm.config.to_dict(),
        image_token_id=model.image_token_id, projector_hidden_act="gelu", multimodal_projector_bias=True,
        vision_feature_layer=-1, vision_feature_select_strategy="default" if tower.kind == "clip" else "full",
        image_seq_length=model.num_image_tokens,
    )  # fmt: skip


def export_llava(model_dir: str, out_dir: str) -> None:
    """Write the LLaVA folder ``out_dir`` (config, weights, tokenizer, image processor) from the
    mage-fast export ``model_dir``; ValueError for aligners LLaVA has no counterpart of."""
    from transformers import LlavaForConditionalGeneration

    model, tok = load_pretrained(model_dir)
    kind = model.cfg.aligner.type
    if kind != "mlp2x_gelu":
        raise ValueError(
            f"{model_dir}: a {kind!r} aligner has no LLaVA counterpart; `python -m mage_fast.export "
            f"{model_dir} OUT` writes it as a transformers folder with its own code (docs/hf-export.md)"
        )
    with torch.device("meta"):
        hf = LlavaForConditionalGeneration(llava_config(model))
    hf.load_state_dict(llava_state(model), strict=True, assign=True)
    with _staged(out_dir) as tmp:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        image_transform(model_dir, model.image_size).save(tmp)


def main(argv: list[str] | None = None) -> None:
    """python -m mage_fast.export.hf_llava {import,export} SRC OUT"""
    import argparse

    p = argparse.ArgumentParser(prog="mage_fast.export.hf_llava", description="LLaVA (transformers) folders in and out")
    p.add_argument("direction", choices=("import", "export"), help="import: LLaVA -> mage-fast; export: the reverse")
    p.add_argument("src")
    p.add_argument("out")
    a = p.parse_args(argv)
    (import_llava if a.direction == "import" else export_llava)(a.src, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
