"""Collator: shapes and padding for text-only, image and mixed batches; end to end from the dataset."""

from __future__ import annotations

import pytest
import torch
from _data_helpers import qa, write_png, write_rows

from mage_fast.data import IGNORE_INDEX, Collator, ImageTransform, LlavaDataset

S, PAD = 4, 0


def sample(sid: str, n_tok: int, captions: list[list[int]]) -> dict:
    return {
        "id": sid,
        "input_ids": torch.arange(1, n_tok + 1),
        "labels": torch.arange(1, n_tok + 1),
        "pixel_values": torch.randn(len(captions), 3, S, S),
        "caption_ids": [torch.tensor(c, dtype=torch.long) for c in captions],
    }


def test_text_only_batch():
    b = Collator(PAD, S)([sample("t1", 3, []), sample("t2", 5, [])])
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, 5)
    assert b["pixel_values"].shape == (0, 3, S, S) and b["pixel_values"].dtype == torch.float32
    assert b["image_counts"].tolist() == [0, 0]
    assert b["caption_ids"].shape == b["caption_mask"].shape == (0, 1)
    assert b["caption_mask"].dtype == torch.bool
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5]
    assert b["input_ids"][0].tolist() == [1, 2, 3, PAD, PAD]
    assert b["labels"][0].tolist() == [1, 2, 3, IGNORE_INDEX, IGNORE_INDEX] and b["ids"] == ["t1", "t2"]


def test_mixed_batch_orders_images_and_pads_captions():
    samples = [sample("two", 4, [[5, 6, 7], []]), sample("none", 6, []), sample("one", 2, [[8]])]
    b = Collator(PAD, S)(samples)
    assert b["input_ids"].shape == (3, 6) and all(
        v.dtype == torch.long for k, v in b.items() if k in ("input_ids", "labels", "attention_mask")
    )
    assert b["image_counts"].tolist() == [2, 0, 1]
    assert torch.equal(b["pixel_values"], torch.cat([samples[0]["pixel_values"], samples[2]["pixel_values"]]))
    assert b["caption_ids"].tolist() == [[5, 6, 7], [PAD] * 3, [8, PAD, PAD]]
    assert b["caption_mask"].tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    assert b["attention_mask"].sum(1).tolist() == [4, 6, 2]


def test_wrong_image_size_is_an_error():
    with pytest.raises(ValueError, match="expected"):
        Collator(PAD, S + 1)([sample("x", 2, [[1]])])


def test_dataset_to_batch(tmp_path, tok):
    write_png(str(tmp_path / "a.png"))
    rows = [qa("img", "a.png", caption="a red circle"), qa("txt", None, q="what is this")]
    ds = LlavaDataset(
        write_rows(str(tmp_path / "d.jsonl"), rows),
        tok,
        image_root=str(tmp_path),
        transform=ImageTransform(S),
        num_image_tokens=2,
        max_length=32,
        max_bad_fraction=0.0,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=Collator(tok.pad_token_id, S))
    b = next(iter(loader))
    assert b["ids"] == ["img", "txt"] and b["image_counts"].tolist() == [1, 0]
    assert b["pixel_values"].shape == (1, 3, S, S) and b["caption_mask"].sum() == 3
    assert (b["labels"] != IGNORE_INDEX).sum() == 8  # "a red circle </s>" in both rows
