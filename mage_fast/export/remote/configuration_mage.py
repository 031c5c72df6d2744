"""MageConfig: a MAGE-style model (vision tower, aligner, causal LLM) exported by mage-fast."""

from __future__ import annotations

from transformers import CONFIG_MAPPING, PretrainedConfig


def _sub_config(value, default_type: str):
    """A transformers config from a config or its dict (``model_type`` picks the class)."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    value = dict(value)
    return CONFIG_MAPPING[value.pop("model_type", default_type)](**value)


class MageConfig(PretrainedConfig):
    """vision_config: a CLIP/SigLIP vision config, cut after the feature layer (its last hidden
    state is the feature); text_config: the causal LM's config; aligner: its type and settings
    (``ian``, ``sam``, ``pool_mlp``, ``linear``, ``mlp2x_gelu``); image_token_id: the ``<image>``
    placeholder id, repeated ``num_image_tokens`` times per image in ``input_ids``."""

    model_type = "mage"

    def __init__(
        self,
        vision_config=None,
        text_config=None,
        aligner: dict | None = None,
        image_token_id: int | None = None,
        num_image_tokens: int | None = None,
        template: str = "default",
        **kwargs,
    ):
        self.vision_config = _sub_config(vision_config, "clip_vision_model")
        self.text_config = _sub_config(text_config, "llama")
        self.aligner = dict(aligner or {"type": "ian"})
        self.image_token_id = image_token_id
        self.num_image_tokens = num_image_tokens
        self.template = template
        super().__init__(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        for key in ("vision_config", "text_config"):
            if isinstance(getattr(self, key), PretrainedConfig):
                out[key] = getattr(self, key).to_dict()
        return out
