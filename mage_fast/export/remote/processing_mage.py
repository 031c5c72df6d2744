"""MageProcessor: images → pixel values as the model was trained (RGB, bicubic resize to S×S,
values / 255, normalised by mean and std), and text → input_ids with each ``<image>`` expanded to
``num_image_tokens`` placeholder ids, tokenised as mage-fast does (the text between images
without special tokens: the chat template writes the BOS itself)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin


class MageProcessor(ProcessorMixin):
    tokenizer_class = "AutoTokenizer"

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        image_size: int = 336,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        num_image_tokens: int = 1,
        image_token: str = "<image>",
        **kwargs,
    ):
        self.image_size = int(image_size)
        self.image_mean = list(image_mean or [0.48145466, 0.4578275, 0.40821073])
        self.image_std = list(image_std or [0.26862954, 0.26130258, 0.27577711])
        self.num_image_tokens = int(num_image_tokens)
        self.image_token = image_token
        super().__init__(tokenizer, chat_template=chat_template)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def pixels(self, images) -> torch.Tensor:
        """PIL images → float32 (n, 3, S, S)."""
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        out = []
        for img in images:
            img = img.convert("RGB") if img.mode != "RGB" else img
            if img.size != (self.image_size, self.image_size):
                img = img.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
            out.append((x - mean) / std)
        return torch.stack(out) if out else torch.zeros(0, 3, self.image_size, self.image_size)

    def encode(self, text: str) -> list[int]:
        """One text → ids: the pieces between ``<image>`` tokenised without special tokens, each
        ``<image>`` as ``num_image_tokens`` placeholder ids."""
        ids: list[int] = []
        for k, piece in enumerate(text.split(self.image_token)):
            if k:
                ids += [self.image_token_id] * self.num_image_tokens
            ids += self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids

    def __call__(self, images=None, text=None, padding_side: str = "left", return_tensors: str | None = "pt", **kwargs):
        """text: a string or a list (one per sample); images: the images of all samples in
        order, as many as the texts hold ``<image>``. Returns input_ids, attention_mask (padded
        on ``padding_side`` with the pad id, else 0), pixel_values and image_counts."""
        texts = [text] if isinstance(text, str) else list(text or [])
        images = [images] if isinstance(images, Image.Image) else list(images or [])
        counts = [t.count(self.image_token) for t in texts]
        if sum(counts) != len(images):
            raise ValueError(f"the texts hold {sum(counts)} {self.image_token} but {len(images)} images were given")
        ids = [self.encode(t) for t in texts]
        width = max((len(i) for i in ids), default=0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for r, row in enumerate(ids):
            cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            input_ids[r, cols], mask[r, cols] = torch.tensor(row, dtype=torch.long), 1
        data = {"input_ids": input_ids, "attention_mask": mask}
        if images:
            data["pixel_values"] = self.pixels(images)
            data["image_counts"] = torch.tensor(counts, dtype=torch.long)
        return BatchFeature(data=data, tensor_type=None)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
