"""MageForConditionalGeneration: vision tower → aligner → visual tokens in the LLM's input.

input_ids hold ``config.num_image_tokens`` copies of ``config.image_token_id`` per image, in image
order; pixel_values (n_img, 3, S, S) one image each; image_counts (B,) images per sample (the
``sam`` aligner aligns a sample's images together; default one per sample). The tower's last
hidden state (CLS dropped for CLIP) goes through the aligner to Z (n_img, T, D), scattered into
the placeholders' embeddings; the causal LM does the rest, so ``generate`` works as for any
decoder (pixel values are used in the prefill step only).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, CLIPVisionModel, GenerationMixin, PreTrainedModel, SiglipVisionModel

from .aligner_mage import build_aligner
from .configuration_mage import MageConfig


class MagePreTrainedModel(PreTrainedModel):
    config_class = MageConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    _supports_sdpa = True
    _supports_attention_backend = True
    _no_split_modules = []

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from the folder; modules keep their own initialisation."""


class MageForConditionalGeneration(MagePreTrainedModel, GenerationMixin):
    def __init__(self, config: MageConfig):
        super().__init__(config)
        vc = config.vision_config
        self.is_clip = "siglip" not in vc.model_type
        tower_cls = CLIPVisionModel if self.is_clip else SiglipVisionModel
        self.vision_tower = tower_cls(vc)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        grid = vc.image_size // vc.patch_size
        self.aligner = build_aligner(config.aligner, vc.hidden_size, config.text_config.hidden_size, grid)
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.language_model.get_output_embeddings()

    def get_image_features(self, pixel_values: torch.Tensor, image_counts: torch.Tensor | None = None):
        """pixels (n_img, 3, S, S) → visual tokens Z (n_img, T, D)."""
        dtype = next(self.aligner.parameters()).dtype
        out = self.vision_tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        feats = out.hidden_states[-1]
        return self.aligner(feats[:, 1:] if self.is_clip else feats, image_counts)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None, image_counts) -> torch.Tensor:
        """Token embeddings (B, L, D) with each image's T visual tokens in its placeholders."""
        embeds = self.get_input_embeddings()(input_ids)
        is_img = input_ids == self.config.image_token_id
        n_img = 0 if pixel_values is None else pixel_values.shape[0]
        if int(is_img.sum()) != n_img * self.config.num_image_tokens:
            raise ValueError(
                f"{int(is_img.sum())} image placeholder tokens for {n_img} image(s) × "
                f"{self.config.num_image_tokens} visual tokens; the processor expands each <image>"
            )
        if n_img == 0:
            return embeds
        z = self.get_image_features(pixel_values, image_counts)
        return embeds.masked_scatter(is_img.unsqueeze(-1), z.to(embeds.dtype).reshape(-1, z.shape[-1]))

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        if inputs_embeds is None:
            # after the prefill step generate passes only the new token (no placeholders, no pixels)
            inputs_embeds = self.embed(input_ids, pixel_values, image_counts)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
