"""A mage-fast export folder as a transformers folder that loads without mage_fast:

    python -m mage_fast.export DIR OUT [--format remote|llava]

OUT holds config.json (``model_type: mage``, ``auto_map`` to the modeling and configuration files
in OUT), model.safetensors (the tower as ``vision_tower.*``, the aligner as ``aligner.*`` under
mage-fast's names, the causal LM as ``language_model.*``), the remote code (configuration_mage.py,
modeling_mage.py, aligner_mage.py, processing_mage.py: torch and transformers only), and the
processor: the tokenizer, processor_config.json (image size, mean, std, tokens per image, and
``auto_map`` to MageProcessor) and chat_template.jinja rendering the model's template. Then

    processor = AutoProcessor.from_pretrained(OUT, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(OUT, trust_remote_code=True)

load it; greedy ``model.generate`` answers as ``mage_fast.apps.chat`` does on DIR. Every aligner
exports this way (``mlp2x_gelu`` also as a LLaVA folder: mage_fast.export.hf_llava).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import torch

from mage_fast.export import remote
from mage_fast.export.chat_templates import chat_template
from mage_fast.export.hf_llava import _staged  # the folder appears whole or not at all
from mage_fast.export.llava import export_llava_folder
from mage_fast.export.pretrained import image_transform, load_pretrained
from mage_fast.export.remote.configuration_mage import MageConfig
from mage_fast.export.remote.modeling_mage import MageForConditionalGeneration
from mage_fast.export.remote.processing_mage import MageProcessor

REMOTE_FILES = ("configuration_mage.py", "modeling_mage.py", "aligner_mage.py", "processing_mage.py")
AUTO_MAP = {
    "AutoConfig": "configuration_mage.MageConfig",
    "AutoModelForImageTextToText": "modeling_mage.MageForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_mage.MageProcessor"}


def hf_state(model) -> dict[str, torch.Tensor]:
    """A MageModel's weights under MageForConditionalGeneration's names."""
    parts = {"vision_tower": model.vision_tower.tower, "aligner": model.aligner, "language_model": model.llm}
    return {f"{p}.{k}": v.contiguous() for p, m in parts.items() for k, v in m.state_dict().items()}


def hf_model(model):
    """MageForConditionalGeneration with the MageModel's config and weights (fp32)."""

    def sub(config) -> dict:  # the part folders' paths mean nothing in the export
        return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}

    cfg = MageConfig(
        vision_config=sub(model.vision_tower.tower.config),
        text_config=sub(model.llm.config),
        aligner=dataclasses.asdict(model.cfg.aligner),
        image_token_id=model.image_token_id,
        num_image_tokens=model.num_image_tokens,
        template=model.cfg.template,
    )
    hf = MageForConditionalGeneration(cfg).eval()
    missing, unexpected = hf.load_state_dict(hf_state(model), strict=False)
    if missing or unexpected:
        raise ValueError(f"export: weights missing {missing[:8]}, unexpected {unexpected[:8]}")
    return hf


def _add_json(path: str, extra: dict) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**data, **extra}, f, indent=2)


def write_processor(out: str, tok, template: str, transform, num_image_tokens: int) -> None:
    """Tokenizer, processor_config.json (with auto_map) and chat_template.jinja into ``out``."""
    proc = MageProcessor(
        tok,
        chat_template=chat_template(template, tok),
        image_size=transform.size,
        image_mean=list(transform.mean),
        image_std=list(transform.std),
        num_image_tokens=num_image_tokens,
    )
    proc.save_pretrained(out)
    _add_json(
        os.path.join(out, "processor_config.json"), {"processor_class": "MageProcessor", "auto_map": PROCESSOR_AUTO_MAP}
    )


def export_hf(model_dir: str, out_dir: str) -> None:
    """Write the transformers folder ``out_dir`` from the mage-fast export ``model_dir``."""
    model, tok = load_pretrained(model_dir)
    hf = hf_model(model)
    with _staged(out_dir) as tmp:
        hf.save_pretrained(tmp)
        _add_json(
            os.path.join(tmp, "config.json"), {"architectures": ["MageForConditionalGeneration"], "auto_map": AUTO_MAP}
        )
        src = os.path.dirname(os.path.abspath(remote.__file__))
        for name in REMOTE_FILES:
            shutil.copy(os.path.join(src, name), os.path.join(tmp, name))
        transform = image_transform(model_dir, model.image_size)
        write_processor(tmp, tok, model.cfg.template, transform, model.num_image_tokens)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="mage_fast.export", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a mage-fast export folder (run_dir/export)")
    p.add_argument("out", help="the transformers folder to write")
    p.add_argument(
        "--format",
        choices=("remote", "llava"),
        default="remote",
        help="remote: any aligner, with its code in the folder (trust_remote_code); "
        "llava: an mlp2x_gelu model as a LlavaForConditionalGeneration folder with its processor",
    )
    a = p.parse_args(argv)
    if a.format == "llava":
        export_llava_folder(a.model, a.out)
    else:
        export_hf(a.model, a.out)
    print(f"wrote {a.out}")
