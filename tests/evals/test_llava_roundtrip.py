"""LLaVA checkpoints in and out: a small random transformers LlavaForConditionalGeneration is
imported (same logits as transformers), trained one step from (init_from, one process), exported
back as a LLaVA folder that transformers loads with our logits (fp32, max abs diff <= 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from testutil import ROOT, tiny_model_config

from mage_fast.data.image import ImageTransform
from mage_fast.export import hf_llava, pretrained

TOL = 1e-5


@pytest.fixture(scope="module")
def llava_dir(tokenizer, tmp_path_factory) -> str:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(image_size=24, patch_size=8, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=3, num_attention_heads=2)  # fmt: skip
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                       tie_word_embeddings=False)  # fmt: skip
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), vision_feature_layer=-2,
                      image_token_id=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=9)  # fmt: skip
    model = LlavaForConditionalGeneration(cfg).eval()
    out = str(tmp_path_factory.mktemp("llava") / "llava-tiny-hf")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ImageTransform(24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).save(out)
    return out


def _inputs(tok, n_img_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    image = tok.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tok.bos_token_id, *[image] * n_img_tokens, 7, 8, 9, 10]] * 2)
    return ids, torch.randn(2, 3, 24, 24, generator=g)


@torch.no_grad()
def _ours(model_dir: str, ids: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    model, _ = pretrained.load_pretrained(model_dir)
    embeds, _ = model.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    return model.llm(inputs_embeds=embeds).logits


@torch.no_grad()
def _theirs(llava: str, ids: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    from transformers import LlavaForConditionalGeneration

    hf = LlavaForConditionalGeneration.from_pretrained(llava, dtype=torch.float32).eval()
    return hf(input_ids=ids, pixel_values=pix).logits


def test_import_matches_transformers(llava_dir, tokenizer, tmp_path) -> None:
    out = str(tmp_path / "imported")
    hf_llava.import_llava(llava_dir, out)
    cfg = pretrained.read_config(out)
    assert (cfg.aligner.type, cfg.template, cfg.vision.select_layer) == ("mlp2x_gelu", "vicuna_v1", -2)
    assert pretrained.image_transform(out, 1).mean == (0.5, 0.5, 0.5)
    ids, pix = _inputs(tokenizer, 9)
    assert (_ours(out, ids, pix) - _theirs(llava_dir, ids, pix)).abs().max() <= TOL


@pytest.fixture(scope="module")
def trained(llava_dir, shapes_dir, tmp_path_factory) -> str:
    """One optimizer step from the LLaVA folder (one process), exported."""
    run = str(tmp_path_factory.mktemp("run") / "from_llava")
    args = [f"run_dir={run}", f"init_from={llava_dir}", f"data.root={shapes_dir}", "data.train=stage2.json",
            "data.eval=null", "max_steps=1", "micro_batch_size=4", "optim.warmup_steps=0", "optim.lr=1e-2"]  # fmt: skip
    p = subprocess.run([sys.executable, "-m", "mage_fast.train", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return run


@pytest.mark.slow  # a one-process training run (the module's `trained`)
def test_training_from_llava_uses_its_template_and_weights(trained, llava_dir) -> None:
    with open(os.path.join(trained, "export", pretrained.CONFIG_NAME)) as f:
        saved = json.load(f)
    assert (saved["template"], saved["aligner"]["type"]) == ("vicuna_v1", "mlp2x_gelu")
    before = pretrained.aligner_state(os.path.join(trained, "llava_init"))
    after = pretrained.aligner_state(os.path.join(trained, "export"))
    assert before.keys() == after.keys() == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step moved the projector


@pytest.mark.slow  # a one-process training run (the module's `trained`)
def test_export_loads_in_transformers_with_our_logits(trained, tokenizer, tmp_path) -> None:
    out = str(tmp_path / "llava-out")
    hf_llava.export_llava(os.path.join(trained, "export"), out)
    assert hf_llava.is_llava_dir(out)
    ids, pix = _inputs(tokenizer, 9)
    diff = (_ours(os.path.join(trained, "export"), ids, pix) - _theirs(out, ids, pix)).abs().max()
    assert diff <= TOL, f"max abs logit difference {diff}"


def test_ian_keeps_our_format(tokenizer, tmp_path) -> None:
    from mage_fast.model.mllm import MageModel
    from mage_fast.train.engine import export_state

    model = MageModel(tiny_model_config("ian"), len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    pretrained.write_export(str(tmp_path / "ian"), model, tokenizer, export_state(model))
    with pytest.raises(ValueError, match="'ian' aligner has no LLaVA counterpart"):
        hf_llava.export_llava(str(tmp_path / "ian"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
