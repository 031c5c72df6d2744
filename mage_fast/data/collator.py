"""Batches LlavaDataset samples for the model: right-padded rows, or packed rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mage_fast.data.packing import pack_rows
from mage_fast.data.template import IGNORE_INDEX


class Collator:
    """List of samples → batch dict (B samples, N images in the batch, S = ``image_size``):

    - ``input_ids`` (B, L) long, right-padded with ``pad_id``; ``attention_mask`` (B, L) long;
      ``labels`` (B, L) long, padded with -100
    - ``pixel_values`` (N, 3, S, S) float32: every image in sample order, then image order;
      (0, 3, S, S) for a text-only batch (the vision tower still runs on every rank)
    - ``image_counts`` (B,) long: images per sample, so ``pixel_values`` splits back per sample
    - ``caption_ids`` (N, Lc) long padded with ``pad_id``, Lc >= 1; ``caption_mask`` (N, Lc) bool,
      all False for an image without caption
    - ``ids``: list of B sample ids

    With ``pack_length`` the samples are packed (`mage_fast.data.packing.pack_rows`) into R <= B
    rows of at most ``pack_length`` tokens: the row tensors are (R, L), and two more keys say where
    each sample lies: ``position_ids`` (R, L), restarting at 0 per sample, and ``sample_rows`` (B,),
    each sample's row. Per-sample keys (``image_counts``, ``ids``, images and captions) follow
    the packed order, row by row.
    """

    def __init__(self, pad_id: int, image_size: int, pack_length: int | None = None):
        if pad_id is None:  # e.g. tokenizer.pad_token_id before ensure_special_tokens()
            raise ValueError("Collator needs a pad id; call ensure_special_tokens(tokenizer) first")
        if pack_length is not None and pack_length < 1:
            raise ValueError(f"Collator pack_length must be a positive int or None, got {pack_length!r}")
        self.pad_id, self.image_size, self.pack_length = int(pad_id), int(image_size), pack_length

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not samples:
            raise ValueError("Collator got an empty batch")
        if self.pack_length is not None:
            samples, rows = pack_rows(samples, self.pack_length, self.pad_id)
        else:
            rows = self._padded_rows(samples)
        return {**rows, **self._media(samples), "ids": [s["id"] for s in samples]}

    def _padded_rows(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, labels: one right-padded row per sample, (B, max length)."""
        B, L = len(samples), max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[b, :n] = s["input_ids"]
            labels[b, :n] = s["labels"]
            attention_mask[b, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _media(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """pixel_values, image_counts, caption_ids, caption_mask, in the samples' order."""
        S = self.image_size
        pixels = [s["pixel_values"] for s in samples]
        for s, p in zip(samples, pixels):
            if p.dim() != 4 or tuple(p.shape[1:]) != (3, S, S):
                raise ValueError(f"sample {s['id']!r}: pixel_values {tuple(p.shape)}, expected (n, 3, {S}, {S})")
        pixel_values = torch.cat(pixels).float() if pixels else torch.zeros(0, 3, S, S)
        captions = [c for s in samples for c in s["caption_ids"]]
        if len(captions) != pixel_values.shape[0]:
            raise ValueError(f"{len(captions)} captions for {pixel_values.shape[0]} images")
        Lc = max([1] + [len(c) for c in captions])
        caption_ids = torch.full((len(captions), Lc), self.pad_id, dtype=torch.long)
        caption_mask = torch.zeros((len(captions), Lc), dtype=torch.bool)
        for k, c in enumerate(captions):
            caption_ids[k, : len(c)] = c
            caption_mask[k, : len(c)] = True
        return {
            "pixel_values": pixel_values,
            "image_counts": torch.tensor([p.shape[0] for p in pixels], dtype=torch.long),
            "caption_ids": caption_ids,
            "caption_mask": caption_mask,
        }
