"""LoRA in one process (no launch): the `lora:` config and its refusals, which parameters train,
the optimizer's param groups (the aligner at its own learning rate, frozen weights in none), a
checkpoint of another LoRA config refused, the merged and adapter exports against the adapted
model's logits (QLoRA: test_train_qlora_units.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.configtools import ConfigError, dump_yaml, load_config
from mage_fast.export import pretrained
from mage_fast.export.adapter import load_adapter_export
from mage_fast.model import lora
from mage_fast.model.lora_config import LoraConfig
from mage_fast.model.mllm import MageModel
from mage_fast.train import lora_export
from mage_fast.train.checkpoint import META, ResumeError, check_compatible
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import apply_freeze, build_optimizer, export_state, param_shapes


def test_lora_is_off_by_default_and_in_the_resolved_config():
    cfg = load_config(TrainConfig, None, [])
    assert cfg.lora.enable is False
    cfg = load_config(TrainConfig, None, ["lora.enable=true", "lora.r=4", "lora.lr=2e-4", "optim.lr_aligner=2e-5"])
    text = dump_yaml(cfg)
    for line in ("lora:", "enable: true", "r: 4", "lr: 0.0002", "lr_aligner: 2.0e-05", "- q_proj", "- aligner"):
        assert line in text, line


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["lora.enable=true", "optim.lr_llm=1e-4"], "LLM's base is frozen under LoRA; set the adapters' learning rate"),
        (["lora.enable=true", "freeze_llm=true"], "freeze_llm=true contradicts lora: its adapters train"),
        (["lora.enable=true", "freeze_aligner=true"], "freeze_aligner=true contradicts lora: lora.train_fully"),
        (["lora.enable=true", "lora.vision=true", "freeze_vision=true"], "freeze_vision=true contradicts lora"),
        (["lora.r=0"], "lora.r must be >= 1"),
        (["lora.dropout=1.0"], r"lora.dropout must be in \[0, 1\)"),
        (["lora.train_fully=[llm]"], r"lora.train_fully\[0\] must be one of \('aligner', 'vision_tower'\)"),
        (["lora.quantize=int8"], r"lora.quantize must be one of \('none', 'nf4'\)"),
        (["lora.quantize=nf4"], "lora.quantize=nf4 quantises the base for LoRA: it needs lora.enable=true"),
        (["lora.vision=true", "lora.train_fully=[vision_tower]"], "adapters or full training, not both"),
    ],
)
def test_bad_lora_config_fails_clearly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, None, overrides)


def _model(tokenizer, overrides: list[str], model_cfg=None) -> tuple[MageModel, TrainConfig]:
    """A MageModel (tiny random, or `model_cfg`'s folders) with the run's freeze switches and LoRA
    applied, no DeepSpeed."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, None, overrides)
    cfg.model = model_cfg or tiny_model_config()
    model = MageModel(cfg.model, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    apply_freeze(model, cfg)
    return model, cfg


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_adapters_on_every_block_linear_and_the_aligner_trains_fully(tokenizer):
    model, _ = _model(tokenizer, ["lora.enable=true", "lora.r=4"])
    names = _trainable(model)
    aligner = {n for n, _ in model.named_parameters() if n.startswith("aligner.")}
    assert aligner and aligner <= names
    adapters = names - aligner
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(n.startswith("llm.model.layers.") for n in adapters)  # never lm_head or the embeddings
    layers = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n in adapters}
    assert layers == set(LoraConfig().target_modules)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not model.llm.get_output_embeddings().weight.requires_grad


def test_vision_adapters_and_a_fully_trained_tower(tokenizer):
    model, _ = _model(tokenizer, ["lora.enable=true", "lora.vision=true"])
    tower = {n for n in _trainable(model) if n.startswith("vision_tower.")}
    assert tower and all(".lora_" in n and ".encoder.layers." in n for n in tower)
    model, _ = _model(tokenizer, ["lora.enable=true", "lora.train_fully=[aligner, vision_tower]"])
    tower = {n for n in _trainable(model) if n.startswith("vision_tower.")}
    assert any(n.endswith("embeddings.patch_embedding.weight") for n in tower)
    assert not any("post_layernorm" in n for n in tower)  # unused by the features: stays frozen


def test_unknown_target_module_names_the_layers_there_are(tokenizer):
    with pytest.raises(ValueError, match=r"no linear layer named 'qkv_proj' in its blocks; its linear layers are"):
        _model(tokenizer, ["lora.enable=true", "lora.target_modules=[qkv_proj]"])


def test_param_groups_aligner_at_its_own_lr_frozen_weights_in_none(tokenizer):
    model, cfg = _model(tokenizer, ["lora.enable=true", "lora.lr=2e-4", "optim.lr_aligner=2e-5", "optim.lr=1e-3"])
    opt, _ = build_optimizer(model, cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"aligner", "llm_lora"}
    assert groups["aligner"]["lr"] == pytest.approx(2e-5 / cfg.optim.warmup_steps)  # warmup's first factor
    assert groups["llm_lora"]["lr"] == pytest.approx(2e-4 / cfg.optim.warmup_steps)
    assert groups["aligner"]["initial_lr"] == 2e-5 and groups["llm_lora"]["initial_lr"] == 2e-4
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    assert set(map(id, model.aligner.parameters())) <= in_groups
    base = [p for n, p in model.llm.named_parameters() if ".lora_" not in n]
    assert base and not any(id(p) in in_groups for p in base)


def test_a_lora_checkpoint_refuses_another_lora_config_naming_the_module(tokenizer, tmp_path):
    # The adapters' names and shapes are in the checkpoint's parameter shapes: a resume with LoRA
    # off, or another rank, fails before loading, naming the module and both shapes.
    saved, _ = _model(tokenizer, ["lora.enable=true", "lora.r=4"])
    folder = tmp_path / "checkpoints" / "step00000002"
    folder.mkdir(parents=True)
    (folder / META).write_text(json.dumps({"step": 2, "world_size": 1, "shapes": param_shapes(saved)}))
    plain, _ = _model(tokenizer, [])
    with pytest.raises(ResumeError, match=r"module llm\.model\.layers\.0\.\S+ parameter \S+ has shape \(\d+, \d+\) in the "
                       r"checkpoint but absent in this model config"):  # fmt: skip
        check_compatible(str(tmp_path), "step00000002", param_shapes(plain), 1)
    other, _ = _model(tokenizer, ["lora.enable=true", "lora.r=8"])
    with pytest.raises(
        ResumeError, match=r"lora_A\.default\.weight has shape \(4, \d+\) in the checkpoint but shape \(8,"
    ):
        check_compatible(str(tmp_path), "step00000002", param_shapes(other), 1)


def _perturb_adapters(model) -> None:
    """Non-zero B (peft starts it at zero, where any merge looks right)."""
    g = torch.Generator().manual_seed(1)
    for layer in lora.lora_layers(model).values():
        w = layer.lora_B[lora.ADAPTER].weight
        w.data.copy_(torch.randn(w.shape, generator=g) * 0.1)


def _logits(model, tokenizer) -> torch.Tensor:
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[1, *[image_id] * model.num_image_tokens, 7, 8, 9]])
    pix = torch.randn(1, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.llm(inputs_embeds=model.embed(ids, pix, torch.tensor([1]))[0]).logits


def test_merged_and_adapter_exports_give_the_adapted_models_logits(tokenizer, tmp_path):
    # The base (a "stage 1" export) on disk; LoRA on its LLM and tower, adapters perturbed.
    torch.manual_seed(0)
    first = MageModel(tiny_model_config("mlp2x_gelu"), len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    base = str(tmp_path / "base")
    pretrained.write_export(base, first, tokenizer, export_state(first))
    model, _ = _model(tokenizer, ["lora.enable=true", "lora.vision=true"], pretrained.read_config(base))
    model.aligner.load_state_dict(pretrained.aligner_state(base))
    _perturb_adapters(model)
    model.eval()
    want = _logits(model, tokenizer)
    assert (want - _logits(first.eval(), tokenizer)).abs().max() > 1e-2  # the adapters change the output

    merged = str(tmp_path / "merged")
    pretrained.write_export(merged, model, tokenizer, export_state(model))
    back, _ = pretrained.load_pretrained(merged)
    torch.testing.assert_close(_logits(back, tokenizer), want, atol=1e-5, rtol=0)

    adapter = str(tmp_path / lora_export.ADAPTER_EXPORT)
    assert lora_export.write_adapter_export(adapter, model, tokenizer, rank=0)
    assert sorted(os.listdir(os.path.join(adapter, "llm"))) == ["adapter_config.json", "adapter_model.safetensors"]
    back, _ = load_adapter_export(adapter)
    torch.testing.assert_close(_logits(back, tokenizer), want, atol=1e-5, rtol=0)


def test_adapter_export_needs_a_base_folder(tokenizer, tmp_path, capsys):
    model, _ = _model(tokenizer, ["lora.enable=true"])
    out = str(tmp_path / "a")
    assert not lora_export.write_adapter_export(out, model, tokenizer, rank=0)
    assert not os.path.exists(out) and "llm has no base folder (random init)" in capsys.readouterr().out
