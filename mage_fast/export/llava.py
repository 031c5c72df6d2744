"""An ``mlp2x_gelu`` model as a transformers LLaVA folder with its processor:

    python -m mage_fast.export --format llava DIR OUT

The folder of :func:`mage_fast.export.hf_llava.export_llava` (LlavaForConditionalGeneration's
config and weights, tokenizer, preprocessor_config.json) plus what ``AutoProcessor`` reads: a
LlavaProcessor whose image processor resizes to S×S as mage-fast does (bicubic, no crop, the
model's mean and std), whose image token count is the model's (``patch_size``, the CLS token of a
CLIP tower dropped), and whose chat template renders the model's template.
"""

from __future__ import annotations

from mage_fast.export.chat_templates import adds_bos, chat_template
from mage_fast.export.hf_llava import _staged, export_llava
from mage_fast.export.pretrained import image_transform, read_config


def llava_processor(tok, template: str, transform, patch_size: int, clip: bool):
    """LlavaProcessor for a folder exported from an ``mlp2x_gelu`` model."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    side = {"height": transform.size, "width": transform.size}
    image = CLIPImageProcessor(
        size=side,
        crop_size=side,
        do_center_crop=False,
        resample=3,
        do_convert_rgb=True,
        image_mean=list(transform.mean),
        image_std=list(transform.std),
    )
    return LlavaProcessor(
        image_processor=image,
        tokenizer=tok,
        patch_size=patch_size,
        vision_feature_select_strategy="default" if clip else "full",
        num_additional_image_tokens=1 if clip else 0,
        chat_template=chat_template(template, tok, bos=not adds_bos(tok)),
    )


def export_llava_folder(model_dir: str, out_dir: str) -> None:
    """Write the LLaVA folder with its processor (``mlp2x_gelu`` models only; ValueError else)."""
    from transformers import AutoTokenizer

    cfg = read_config(model_dir)
    with _staged(out_dir) as tmp:
        export_llava(model_dir, tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        transform = image_transform(model_dir, cfg.vision.image_size)
        proc = llava_processor(tok, cfg.template, transform, cfg.vision.patch_size, cfg.vision.type == "clip")
        proc.save_pretrained(tmp)
