"""QLoRA on real 2-rank DeepSpeed runs (CPU, gloo, ZeRO-2): stage 2 with `lora.quantize=nf4` from
a base export (an mlp2x_gelu "stage 1" model: the `adapter_base` fixture): the LLM's block
linears 4-bit NF4 (bitsandbytes, double quantisation), peft's LoRA on them, the aligner trained
fully.

One reference launch (`adapter_ref`: 6 steps, checkpoints at 2, 4, 6) carries most assertions,
with the checks every adapter run passes (adapterutil.AdapterRunChecks): the losses fall, only
the adapters and the aligner are in the optimizer, the 4-bit base in the final checkpoint is bit
for bit the base export quantised afresh, the merged export (the dequantised base plus the
adapters) and the adapter export on the 4-bit base give the trained model's logits.
The trained model is rebuilt from the final checkpoint's module state, not from the export code.
A second launch resumes the state a kill mid-save leaves, with the uninterrupted losses exactly; a
third resumes a 2-rank checkpoint on 1 rank (the universal checkpoint) within fp32 rounding.
"""

from __future__ import annotations

import os

import pytest
import torch
from adapterutil import MODEL, AdapterRunChecks, probe_inputs, probe_logits
from testutil import ROOT

from mage_fast.configtools import load_config
from mage_fast.export import pretrained
from mage_fast.export.adapter import load_adapter_export
from mage_fast.model import lora, qlora
from mage_fast.model.mllm import MageModel
from mage_fast.train import lora_export
from mage_fast.train.checkpoint import complete_tags
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import apply_freeze

pytest.importorskip("bitsandbytes", reason="QLoRA's 4-bit layers (make test installs requirements-test.txt)")
pytestmark = pytest.mark.slow

QLORA = ["lora.enable=true", "lora.quantize=nf4", "lora.r=4", "lora.alpha=8", "lora.lr=1e-2", "lora.dropout=0.0"]
STEPS = ["max_steps=6", "save_every=2", "keep_last=5", "data.eval=null", "deterministic=true", "faults.probe=true"]
ZERO2 = os.path.join(ROOT, "configs", "deepspeed", "zero2.json")
TOL = 1e-5


@pytest.fixture(scope="module")
def adapter_args(shapes_dir, adapter_base) -> list[str]:
    """The reference run's arguments (`adapter_ref`, tests/train/conftest.py) but its run_dir."""
    return [f"data.root={shapes_dir}", f"deepspeed={ZERO2}", f"init_from={adapter_base}", *MODEL, *QLORA, *STEPS]


class TestQloraRun(AdapterRunChecks):
    """The shared checks; the optimizer-state bound holds with the 4-bit base counting the
    weights it stands for."""

    LABEL = "QLoRA"


def _module_state(run: str) -> dict[str, torch.Tensor]:
    """The final checkpoint's module state (ZeRO-2 keeps every weight whole in it)."""
    tag = complete_tags(run)[-1]
    path = os.path.join(run, "checkpoints", tag, "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def _qlora_model(base: str, tokenizer) -> MageModel:
    """The base export with QLoRA applied as the run applies it (quantised afresh, adapters at init)."""
    cfg = load_config(TrainConfig, None, [*MODEL, *QLORA])
    model, _ = pretrained.load_pretrained(base)
    apply_freeze(model, cfg)
    return model


def test_4bit_base_is_bit_identical_after_training(adapter_ref, adapter_base, tokenizer):
    saved = _module_state(adapter_ref)
    fresh = _qlora_model(adapter_base, tokenizer).state_dict()
    quant = [k for k in fresh if ".base_layer.weight" in k]  # packed weights and every quant-state tensor
    assert len(quant) == 7 * 6 and set(quant) <= set(saved)
    for k in quant:
        assert saved[k].dtype == fresh[k].dtype and torch.equal(saved[k], fresh[k]), k
    assert saved[quant[0]].dtype == torch.uint8
    aligner = [k for k in fresh if k.startswith("aligner.")]
    assert any(not torch.equal(saved[k], fresh[k]) for k in aligner)  # it trained


@pytest.fixture(scope="module")
def trained(adapter_ref, adapter_base, tokenizer) -> MageModel:
    """The trained model: the base, QLoRA as configured, the final checkpoint's module state."""
    model = _qlora_model(adapter_base, tokenizer)
    model.load_state_dict(_module_state(adapter_ref))
    return model.eval()


def test_merged_export_is_the_dequantised_base_plus_adapters(adapter_ref, trained, tokenizer):
    ids, pix = probe_inputs(trained, tokenizer)
    want = probe_logits(trained, ids, pix)
    merged, _ = pretrained.load_pretrained(os.path.join(adapter_ref, "export"))
    assert not lora.lora_layers(merged) and not qlora.quantized_layers(merged)  # a plain fp32 model
    d = (probe_logits(merged, ids, pix) - want).abs().max().item()
    print(f"merged export max|d| {d:.2e}")
    assert d <= TOL


def test_adapter_export_on_the_4bit_base_gives_the_trained_logits(adapter_ref, trained, adapter_base, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids, pix = probe_inputs(trained, tokenizer)
    want = probe_logits(trained, ids, pix)
    out = os.path.join(adapter_ref, lora_export.ADAPTER_EXPORT)
    assert sorted(os.listdir(out)) == ["aligner", "llm", "mage_config.json", "quantize.json", "tokenizer"]
    back, _ = load_adapter_export(out)  # the base folders, the LLM quantised as quantize.json says, adapters
    d_back = (probe_logits(back, ids, pix) - want).abs().max().item()
    # The LLM as a peft user loads it: the base folder quantised the same way, then the adapter folder.
    llm = AutoModelForCausalLM.from_pretrained(os.path.join(adapter_base, "llm"), dtype=torch.float32)
    qlora.quantize_llm(llm, torch.float32)
    llm = PeftModel.from_pretrained(llm, f"{out}/llm").eval()
    embeds, _ = trained.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    with torch.no_grad():
        d = (llm(inputs_embeds=embeds).logits - want).abs().max().item()
    print(f"adapter export max|d| {d_back:.2e}, PeftModel on the 4-bit base LLM {d:.2e}")
    assert d_back <= TOL and d <= TOL
