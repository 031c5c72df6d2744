"""The HF-style export: written to a temp folder and renamed (a failure leaves the old one whole),
read back by load_pretrained with the same outputs, and carrying the training pixel transform."""

from __future__ import annotations

import os

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.data import ImageTransform
from mage_fast.export import pretrained
from mage_fast.model.mllm import MageModel
from mage_fast.train.engine import export_state


def test_export_round_trip_and_atomic_replace(tokenizer, tmp_path) -> None:
    torch.manual_seed(0)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    model = MageModel(tiny_model_config(), len(tokenizer), image_id).eval()
    out = str(tmp_path / "export")
    t = ImageTransform(model.image_size, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    pretrained.write_export(out, model, tokenizer, export_state(model), t)

    back, tok = pretrained.load_pretrained(out)
    ids = torch.tensor([[1, *[image_id] * model.num_image_tokens, 7, 8]])
    pix = torch.randn(1, 3, model.image_size, model.image_size)
    with torch.no_grad():
        a = model.llm(inputs_embeds=model.embed(ids, pix, torch.tensor([1]))[0]).logits
        b = back.llm(inputs_embeds=back.embed(ids, pix, torch.tensor([1]))[0]).logits
    torch.testing.assert_close(a, b)
    r = pretrained.image_transform(out, 1)
    assert (r.size, r.mean, r.std) == (model.image_size, t.mean, t.std)

    # A write that fails half-way (the LLM's state is missing) leaves the old export as it was and
    # no temporary folder behind.
    before = sorted(os.listdir(out))
    bad = export_state(model)
    del bad["llm"]
    with pytest.raises(KeyError):
        pretrained.write_export(out, model, tokenizer, bad, t)
    assert sorted(os.listdir(out)) == before
    assert [p for p in os.listdir(tmp_path) if p.startswith(".export")] == []
