"""ImageTransform and load_image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _data_helpers import write_truncated
from PIL import Image

from mage_fast.data import CLIP_MEAN, CLIP_STD, ImageTransform, load_image


def test_transform_resizes_converts_and_normalises():
    t = ImageTransform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = t(Image.new("L", (20, 10), color=255))  # grey → RGB, non-square → square
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))  # (1 - 0.5) / 0.5
    rgba = Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA")
    assert torch.allclose(t(rgba), -torch.ones(3, 8, 8))


def test_from_pretrained_dir(tmp_path):
    t = ImageTransform.from_pretrained_dir(tmp_path, default_size=32)  # no file → CLIP defaults
    assert (t.size, t.mean, t.std) == (32, CLIP_MEAN, CLIP_STD)
    cfg = {
        "crop_size": {"height": 224, "width": 224},
        "size": {"shortest_edge": 256},
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    t = ImageTransform.from_pretrained_dir(str(tmp_path), default_size=32)
    assert (t.size, t.mean, t.std) == (224, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 384, "width": 384}}))
    assert ImageTransform.from_pretrained_dir(tmp_path, default_size=32).size == 384  # SigLIP style


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_image_raises_on_truncated(tmp_path, fmt):
    path = write_truncated(str(tmp_path / f"x.{fmt.lower()}"), fmt)
    Image.open(path)  # the header alone is fine: only a full decode notices
    with pytest.raises(OSError):
        load_image(path)


def test_bad_transform_args():
    with pytest.raises(ValueError):
        ImageTransform(0)
    with pytest.raises(ValueError):
        ImageTransform(8, mean=(0.5, 0.5), std=(1, 1, 1))
