"""QLoRA in one process (no launch): the NF4 layer against bitsandbytes' own dequantisation, which
layers of a MageModel become 4-bit (the LLM's block linears only), what trains, the merged export
of a 4-bit base, the adapter export read back onto the 4-bit base it records, a saved state's
quant state restored on load, and the one-line refusals (no bitsandbytes; ZeRO-3)."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.configtools import ConfigError, load_config
from mage_fast.export import pretrained
from mage_fast.export.adapter import load_adapter_export
from mage_fast.model import lora, qlora
from mage_fast.model.mllm import MageModel
from mage_fast.train import lora_export
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import apply_freeze, build_model, build_optimizer, export_state, param_counts

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA's 4-bit layers (make test installs requirements-test.txt)")
QLORA = ["lora.enable=true", "lora.quantize=nf4", "lora.r=4", "lora.dropout=0.0"]


def _model(overrides: list[str], seed: int = 0) -> MageModel:
    torch.manual_seed(seed)
    cfg = load_config(TrainConfig, None, overrides)
    cfg.model = tiny_model_config("mlp2x_gelu")
    model = MageModel(cfg.model, 100, 99)
    apply_freeze(model, cfg)
    return model


def _logits(model: MageModel) -> torch.Tensor:
    ids = torch.tensor([[1, *[model.image_token_id] * model.num_image_tokens, 7, 8, 9]] * 2)
    pix = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model.llm(inputs_embeds=model.embed(ids, pix, torch.tensor([1, 1]))[0]).logits


def _perturb_adapters(model: MageModel) -> None:
    """Non-zero B (peft starts it at zero, where any merge looks right)."""
    g = torch.Generator().manual_seed(1)
    for layer in lora.lora_layers(model).values():
        w = layer.lora_B[lora.ADAPTER].weight
        w.data.copy_(torch.randn(w.shape, generator=g) * 0.1)


@pytest.mark.parametrize("device", ["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
def test_nf4_layer_is_bnb_nf4_with_double_quantisation_and_computes_with_its_dequantised_weight(device):
    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 48, device=device)
    q = qlora._nf4(linear, torch.float32)  # quantised on `device` (bitsandbytes' CPU or CUDA kernels)
    w, qs = q.weight, q.weight.quant_state
    assert isinstance(q, bnb.nn.Linear4bit) and w.dtype == torch.uint8 and w.numel() == 128 * 48 // 2
    assert w.device.type == device
    assert qs.quant_type == "nf4" and qs.blocksize == 64 and qs.nested  # double quantisation: absmax in 8 bits
    deq = bnb.functional.dequantize_4bit(w.data, qs)
    assert deq.shape == (48, 128) and 0 < (deq - linear.weight).abs().max() < 0.05  # NF4's rounding
    x = torch.randn(5, 128, device=device, requires_grad=True)
    y = q(x)
    torch.testing.assert_close(y, x @ deq.t() + linear.bias, atol=1e-6, rtol=0)
    y.square().sum().backward()  # the gradient reaches the input through the frozen 4-bit weight
    torch.testing.assert_close(x.grad, 2 * y.detach() @ deq, atol=1e-5, rtol=1e-5)
    q.eval()  # the same numbers in eval without grad (bnb's repacked CPU GEMM is kept off)
    with torch.no_grad():
        torch.testing.assert_close(q(x), y, atol=1e-6, rtol=0)


def test_only_the_llm_block_linears_are_4bit_and_only_adapters_and_aligner_train():
    model = _model(QLORA)
    quantised = qlora.quantized_layers(model)
    assert quantised and all(n.startswith("llm.model.layers.") and n.endswith(".base_layer") for n in quantised)
    assert len(quantised) == 7 * model.cfg.llm.num_layers  # q, k, v, o, gate, up, down per block
    assert not qlora.quantized_layers(model.vision_tower) and not qlora.quantized_layers(model.aligner)
    assert model.llm.get_output_embeddings().weight.dtype == torch.float32  # lm_head stays whole
    with pytest.raises(ValueError, match="the LLM is 4-bit already"):
        qlora.quantize_llm(model.llm, torch.float32)
    from peft.tuners.lora.bnb import Linear4bit as PeftLinear4bit

    assert all(isinstance(m, PeftLinear4bit) for m in lora.lora_layers(model.llm).values())  # peft's bnb dispatch
    plain = _model(["lora.enable=true", "lora.r=4"])  # the same adapters on a plain base
    assert param_counts(model) == param_counts(plain)  # a 4-bit weight counts as the weights it stands for
    opt, _ = build_optimizer(model, load_config(TrainConfig, None, QLORA))
    assert {g["name"] for g in opt.param_groups} == {"aligner", "llm_lora"}
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    adapters = {id(p) for n, p in model.llm.named_parameters() if ".lora_" in n}
    assert in_groups == adapters | {id(p) for p in model.aligner.parameters()}


def test_merged_export_of_a_4bit_base_gives_the_qlora_models_logits():
    model = _model(QLORA)
    _perturb_adapters(model)
    model.eval()
    want = _logits(model)
    state = export_state(model)
    assert not any(".absmax" in k or ".lora_" in k or ".base_layer." in k for k in state["llm"])
    plain = _model([])  # the same architecture with plain linears
    for part, module in pretrained.export_parts(plain).items():
        module.load_state_dict(state[part])
    assert plain.llm.model.layers[0].mlp.up_proj.weight.dtype == torch.float32
    torch.testing.assert_close(_logits(plain.eval()), want, atol=1e-5, rtol=0)
    # A bf16 run (DeepSpeed casts the module; the 4-bit codes stay): its export is bf16 throughout.
    assert {v.dtype for v in export_state(model.bfloat16())["llm"].values()} == {torch.bfloat16}


def test_adapter_export_records_the_4bit_base_and_loads_back_onto_it(tokenizer, tmp_path):
    torch.manual_seed(0)
    first = MageModel(tiny_model_config("mlp2x_gelu"), len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    base = str(tmp_path / "base")
    pretrained.write_export(base, first, tokenizer, export_state(first))
    cfg = load_config(TrainConfig, None, QLORA)
    model, _ = pretrained.load_pretrained(base)
    apply_freeze(model, cfg)
    _perturb_adapters(model)
    want = _logits(model.eval())
    out = str(tmp_path / lora_export.ADAPTER_EXPORT)
    assert lora_export.write_adapter_export(out, model, tokenizer, rank=0)
    with open(os.path.join(out, qlora.QUANTIZE_NAME)) as f:
        assert json.load(f) == {"llm": "nf4", "compute_dtype": "float32"}
    back, _ = load_adapter_export(out)
    assert len(qlora.quantized_layers(back.llm)) == len(qlora.quantized_layers(model.llm))
    torch.testing.assert_close(_logits(back), want, atol=1e-6, rtol=0)


def test_loading_a_saved_state_restores_its_4bit_base():
    saved = _model(QLORA, seed=0)
    _perturb_adapters(saved)
    other = _model(QLORA, seed=1)  # another base, so other packed weights and quant states
    assert not torch.equal(_logits(other.eval()), _logits(saved.eval()))
    other.load_state_dict(saved.state_dict())
    torch.testing.assert_close(_logits(other), _logits(saved), atol=0, rtol=0)
    for name, layer in qlora.quantized_layers(saved).items():
        got = qlora.quantized_layers(other)[name].weight
        assert torch.equal(got.data, layer.weight.data)
        assert torch.equal(got.quant_state.absmax, layer.weight.quant_state.absmax)


def test_qlora_is_refused_in_one_line_without_bitsandbytes_and_under_zero3(monkeypatch):
    assert qlora.refusal("none", 3) is None and qlora.refusal("nf4", 2) is None
    zero3 = qlora.refusal("nf4", 3)
    assert "\n" not in zero3 and "ZeRO-3 partitions every parameter" in zero3 and "zero2.json" in zero3
    cfg = load_config(TrainConfig, None, QLORA)
    with pytest.raises(ConfigError, match="under ZeRO-3: ZeRO-3 partitions every parameter"):
        build_model(cfg, {"zero_optimization": {"stage": 3}}, 100, 99)  # before any model is built
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    missing = qlora.refusal("nf4", 2)
    assert "\n" not in missing and "needs bitsandbytes' 4-bit layers, which are not installed" in missing
    with pytest.raises(ConfigError, match="bitsandbytes==0.50.2"):
        build_model(cfg, {"zero_optimization": {"stage": 2}}, 100, 99)
