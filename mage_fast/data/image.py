"""Image loading and the CLIP/SigLIP-style pixel transform (no torchvision, no HF image processors)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image, so a truncated or corrupt file raises here (OSError et al.),
    not later inside a worker. The pixels are not converted; see :class:`ImageTransform`."""
    img = Image.open(path)
    img.load()  # PIL decodes lazily; force it (raises on truncated PNG/JPEG)
    return img


def _size_from(value: object) -> int | None:
    """HF writes sizes as an int or a dict ({"height","width"} / {"shortest_edge"})."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return value[key]
    return None


class ImageTransform:
    """PIL image → RGB → bicubic resize to ``size``×``size`` → float32 tensor (3, size, size),
    normalised per channel with ``mean``/``std`` (values on the 0..1 scale)."""

    def __init__(self, size: int, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        if int(size) < 1:
            raise ValueError(f"image size must be positive, got {size}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean/std must have 3 entries and std > 0, got {mean}, {std}")
        self.size = int(size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_pretrained_dir(cls, path: str | os.PathLike | None, default_size: int) -> ImageTransform:
        """Read ``preprocessor_config.json`` in a local model dir (image_mean, image_std, crop_size or
        size); CLIP defaults and ``default_size`` for whatever is absent."""
        cfg: dict = {}
        file = os.path.join(path, "preprocessor_config.json") if path else ""
        if file and os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                cfg = json.load(f)
        # crop_size is the final size for CLIP (resize shortest edge, then crop); SigLIP has size only
        size = _size_from(cfg.get("crop_size")) or _size_from(cfg.get("size")) or default_size
        return cls(size, cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``preprocessor_config.json`` into the folder ``path``, in the HF form that
        :meth:`from_pretrained_dir` reads back (an exported model carries its training transform)."""
        os.makedirs(path, exist_ok=True)
        cfg = {
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "resample": 3,
            "size": {"height": self.size, "width": self.size},
            "crop_size": {"height": self.size, "width": self.size},
        }
        with open(os.path.join(path, "preprocessor_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Returns float32 (3, S, S)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        if img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1).div_(255.0)
        return (x - self._mean_t) / self._std_t

    def __repr__(self) -> str:
        return f"ImageTransform(size={self.size}, mean={self.mean}, std={self.std})"
