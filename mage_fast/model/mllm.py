"""MageModel: vision tower → aligner → visual tokens merged into the LLM's input → CE + MSE.

Kernel-free: the fused ops enter through `mage_fast.ops` with the backends of `cfg.kernels`.
Under ZeRO-3 the loss reads `lm_head.weight` outside lm_head's own forward; the training glue
registers it as an external parameter of this module so it is gathered for forward and backward.
"""

from __future__ import annotations

import torch
from torch import nn

from mage_fast.labels import IGNORE_INDEX, next_token_targets
from mage_fast.model.aligner import build_aligner
from mage_fast.model.config import ModelConfig
from mage_fast.model.llm import build_llm
from mage_fast.model.vision import VisionTower
from mage_fast.ops import ce_mse


class MageModel(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, image_token_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_token_id = image_token_id
        self.vision_tower = VisionTower(cfg.vision)
        self.llm = build_llm(cfg.llm, vocab_size)
        d = self.llm.config.hidden_size
        g = self.vision_tower.grid
        self.aligner = build_aligner(cfg.aligner, self.vision_tower.hidden_size, d, g, cfg.kernels)
        self.num_image_tokens = cfg.aligner.num_tokens(g)
        self.image_size = self.vision_tower.image_size

    def set_gradient_checkpointing(self, llm: bool, vision: bool) -> None:
        """Recompute the LLM's / the tower's layer activations in backward instead of keeping them
        (HF's `gradient_checkpointing_enable`). Non-reentrant checkpointing: ZeRO-3 gathers a
        layer's parameters again for the recomputation through its module hooks, which the
        reentrant variant bypasses, and frozen parts need no input that requires grad."""
        kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
        for on, part in ((llm, self.llm), (vision, self.vision_tower.tower)):
            if on:
                part.gradient_checkpointing_enable(**kwargs)
            elif part.is_gradient_checkpointing:
                part.gradient_checkpointing_disable()

    # -- images -------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor, image_counts: torch.Tensor | None = None) -> torch.Tensor:
        """pixels (n_img, 3, S, S) → visual tokens Z (n_img, T, D). image_counts (B,): images per
        sample, for aligners that align a sample's images together (`takes_image_counts`)."""
        dtype = next(self.aligner.parameters()).dtype
        v = self.vision_tower(pixel_values.to(dtype))
        if getattr(self.aligner, "takes_image_counts", False):
            return self.aligner(v, image_counts)
        return self.aligner(v)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_counts: torch.Tensor,
        ids: list[str] | None = None,
        sample_rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with each image's T visual tokens scattered into its placeholders.

        input_ids (R, L) hold T copies of the image token per image, in image order. image_counts
        (B,): images per sample; sample_rows (B,): each sample's row of a packed batch (None: one
        sample per row, R = B). Returns inputs_embeds (R, L, D) and Z (n_img, T, D).
        """
        embeds = self.llm.get_input_embeddings()(input_ids)
        is_img = input_ids == self.image_token_id
        self._check_placeholders(is_img.sum(1), image_counts.to(is_img.device), ids, sample_rows)
        if pixel_values.shape[0] == 0:
            # Every rank must run tower and aligner every step (ZeRO-3 gathers per module, and
            # ranks would hang waiting for each other): a zero image that contributes nothing.
            s = self.image_size
            z = self.encode_images(pixel_values.new_zeros(1, 3, s, s))
            return embeds + 0.0 * z.sum().to(embeds.dtype), z[:0]
        z = self.encode_images(pixel_values, image_counts)
        embeds = embeds.masked_scatter(is_img.unsqueeze(-1), z.to(embeds.dtype).reshape(-1, z.shape[-1]))
        return embeds, z

    def _check_placeholders(
        self, found: torch.Tensor, counts: torch.Tensor, ids: list[str] | None, sample_rows: torch.Tensor | None
    ) -> None:
        """found (R,) placeholder tokens per row against counts (B,) images per sample × T."""
        rows = torch.arange(counts.shape[0], device=counts.device) if sample_rows is None else sample_rows
        rows = rows.to(counts.device)
        want = torch.zeros_like(found).index_add(0, rows, counts * self.num_image_tokens)
        images = torch.zeros_like(found).index_add(0, rows, counts)
        bad = (found != want).nonzero().flatten().tolist()
        if bad:
            b = bad[0]
            names = [ids[i] if ids else f"#{i}" for i in (rows == b).nonzero().flatten().tolist()]
            what = f"sample {names[0]}" if sample_rows is None else f"packed row {b} (samples {', '.join(names)})"
            raise ValueError(
                f"{what}: {int(found[b])} image placeholder tokens but {int(images[b])} "
                f"image(s) × {self.num_image_tokens} visual tokens = {int(want[b])} expected"
            )

    def caption_targets(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        """d_txt: masked mean of the (frozen, no-grad) LLM input embeddings of each caption, (M, D)."""
        with torch.no_grad():
            e = self.llm.get_input_embeddings()(caption_ids).float()
            m = caption_mask.unsqueeze(-1).float()
            return (e * m).sum(1) / m.sum(1).clamp(min=1.0)

    # -- training -----------------------------------------------------------------------------
    def _alignment_targets(
        self,
        d_img: torch.Tensor,
        input_ids: torch.Tensor,
        caption_ids: torch.Tensor | None,
        caption_mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """d_txt (M, D) in d_img's dtype and img_mask (M,) bool: which images have a caption."""
        if caption_ids is not None and caption_mask is not None and d_img.shape[0] > 0:
            return self.caption_targets(caption_ids, caption_mask).to(d_img.dtype), caption_mask.any(1)
        if caption_ids is not None:
            # A rank without images still calls the caption embedding lookup: under ZeRO-3 each
            # module call gathers its parameters with the other ranks, which make this call.
            self.caption_targets(input_ids.new_zeros(1, 1), input_ids.new_zeros(1, 1, dtype=torch.bool))
        return torch.zeros_like(d_img), torch.zeros(d_img.shape[0], dtype=torch.bool, device=d_img.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pixel_values: torch.Tensor,
        image_counts: torch.Tensor,
        caption_ids: torch.Tensor | None = None,
        caption_mask: torch.Tensor | None = None,
        ids: list[str] | None = None,
        num_items: int | None = None,
        mse_share: float = 1.0,
        position_ids: torch.Tensor | None = None,
        sample_rows: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """CE on next tokens (labelled positions only) + λ·MSE(d_img, d_txt).

        A packed batch (`Collator(pack_length=...)`) brings position_ids (R, L), restarting at 0 per
        sample, and sample_rows (B,): the LLM then gets the position ids and no 2-D mask, so HF
        keeps attention inside each sample (a block-diagonal causal mask for sdpa / eager, the
        varlen path for flash_attention_2); attention_mask then only counts the real tokens.

        num_items: labelled tokens in the whole accumulated (and data-parallel) batch, for exact
        gradient accumulation; None divides by this micro-batch's count.
        mse_share: this micro-batch's captioned images / the whole step's. The MSE is the mean over
        this micro-batch's captioned images; scaled by its share it becomes this micro-batch's part
        of the step's mean, as `num_items` makes the CE, so the parts of a step add up.
        Returns loss = ce + λ·mse (the op's own sum), ce, mse (0-dim fp32, mse already scaled by
        mse_share) and n_tokens (this micro-batch's labelled tokens).
        """
        embeds, z = self.embed(input_ids, pixel_values, image_counts, ids, sample_rows)
        if position_ids is not None:
            # HF builds the per-sample mask from packed position ids only without a 2-D mask and
            # without a cache (use_cache=False below)
            attention_mask = None
        hidden = self.llm.base_model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        targets, sel = next_token_targets(labels)
        h = hidden[:, :-1][sel]
        y = targets[sel]
        d_img = z.mean(1)
        d_txt, img_mask = self._alignment_targets(d_img, input_ids, caption_ids, caption_mask)
        weight = self.llm.get_output_embeddings().weight
        lam = self.cfg.mse_lambda * mse_share
        loss, ce, mse = ce_mse(
            h,
            weight,
            y,
            d_img,
            d_txt,
            img_mask,
            lam,
            ignore_index=IGNORE_INDEX,
            num_items=num_items,
            backend=self.cfg.kernels.ce_mse,
        )
        return {"loss": loss, "ce": ce, "mse": mse * mse_share, "n_tokens": sel.sum()}

    # -- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor,
        image_counts: torch.Tensor,
        max_new_tokens: int,
        eos_token_id: int,
        synced: bool = False,
    ) -> list[list[int]]:
        """Greedy decoding of prompts of equal length (no padding: bucket by length), KV-cached.

        input_ids (B, L) → per sample the generated ids, up to and excluding eos. `synced`: always run
        max_new_tokens steps, as ZeRO-3 needs when ranks generate together (each forward gathers
        parameters with the other ranks, so no rank may stop early).
        """
        embeds, _ = self.embed(input_ids, pixel_values, image_counts)
        out = self.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        result: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
        for _ in range(max_new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            done |= nxt == eos_token_id
            for i in (~done).nonzero().flatten().tolist():
                result[i].append(int(nxt[i]))
            if bool(done.all()) and not synced:
                break
            out = self.llm(input_ids=nxt[:, None], past_key_values=out.past_key_values, use_cache=True)
        return result
