"""LoRA on real 2-rank DeepSpeed runs (CPU, gloo): stage 2 with `lora.enable=true` from a base
export (an mlp2x_gelu "stage 1" model: the `adapter_base` fixture), ZeRO-3 with every parameter
partitioned.

One reference launch (`adapter_ref`: 6 steps, checkpoints at 2, 4, 6) carries most assertions,
with the checks every adapter run passes (adapterutil.AdapterRunChecks): the losses fall, the
aligner and the adapters train at their own learning rates (the optimizer's param groups, probed
every step), the frozen base costs no optimizer state and leaves the run bit-identical, the merged export (and its LLaVA folder) and the adapter export (peft) give the
trained model's logits. The trained model is rebuilt independently of the export code, from the
final checkpoint through DeepSpeed's own zero_to_fp32. Resume: the state a kill mid-save leaves
(DeepSpeed's files without the COMMITTED marker) resumes with the uninterrupted losses exactly,
under ZeRO-3 and (with LoRA dropout) ZeRO-2; 2 -> 1 ranks through the universal checkpoint.
"""

from __future__ import annotations

import os

import pytest
import torch
from adapterutil import MODEL, AdapterRunChecks, probe_inputs, probe_logits
from launchutil import history_by_step, launch, resume_killed_mid_save
from testutil import ROOT

from mage_fast.configtools import load_config
from mage_fast.export import hf_llava, pretrained
from mage_fast.export.adapter import load_adapter_export
from mage_fast.model import lora
from mage_fast.model.mllm import MageModel
from mage_fast.train import lora_export
from mage_fast.train.checkpoint import complete_tags
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import apply_freeze

pytestmark = pytest.mark.slow

LORA = ["lora.enable=true", "lora.r=4", "lora.alpha=8", "lora.lr=1e-2", "optim.lr_aligner=2e-3"]
# Dropout masks depend on how the samples are split over ranks, so a run resumed on another world
# size matches only without dropout; the ZeRO-2 test keeps it (the RNG state resumes exactly).
NO_DROPOUT = ["lora.dropout=0.0"]
STEPS = ["max_steps=6", "save_every=2", "keep_last=5", "data.eval=null", "deterministic=true"]
PROBE = ["faults.probe=true"]  # lr per group, scheduler steps, weight checksum per step
TOL = 1e-5


def _args(data: str, ds: str, base: str, dropout: bool = False) -> list[str]:
    """A LoRA run's arguments but its run_dir."""
    extra = [] if dropout else NO_DROPOUT
    return [
        f"data.root={data}",
        f"deepspeed={ds}",
        f"init_from={base}",
        *MODEL,
        *LORA,
        *STEPS,
        *extra,
    ]


@pytest.fixture(scope="module")
def adapter_args(shapes_dir, strict_zero3, adapter_base) -> list[str]:
    """The reference run's arguments (`adapter_ref`, tests/train/conftest.py) but its run_dir."""
    return [*_args(shapes_dir, strict_zero3, adapter_base), *PROBE]


class TestLoraRun(AdapterRunChecks):
    LABEL = "LoRA"


def test_each_part_has_its_learning_rate(adapter_ref):
    # The optimizer's param groups, read every step: the aligner at optim.lr_aligner, the adapters
    # at lora.lr, both through the same warmup factor.
    h = history_by_step(adapter_ref)
    for r in h.values():
        assert r["lr"]["llm_lora"] / r["lr"]["aligner"] == pytest.approx(1e-2 / 2e-3)
    assert h[6]["lr"]["aligner"] < h[2]["lr"]["aligner"] <= 2e-3  # the schedule moves both


def _consolidated(run: str) -> dict[str, torch.Tensor]:
    """Every parameter of the final checkpoint, frozen ones too, by DeepSpeed's zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    root = os.path.join(run, "checkpoints")
    return get_fp32_state_dict_from_zero_checkpoint(root, tag=complete_tags(run)[-1])


def test_base_weights_are_bit_identical_after_training(adapter_ref, adapter_base):
    state = _consolidated(adapter_ref)
    back, _ = pretrained.load_pretrained(adapter_base)
    plain = dict(back.named_parameters())
    saved = {k.replace(".base_layer.", "."): v for k, v in state.items() if ".lora_" not in k}
    frozen = [k for k in plain if not k.startswith("aligner.")]
    assert len(frozen) > 20 and set(frozen) <= set(saved)
    for k in frozen:
        assert torch.equal(saved[k], plain[k]), k
    assert any(not torch.equal(saved[k], plain[k]) for k in plain if k.startswith("aligner."))  # it trained


@pytest.fixture(scope="module")
def trained(adapter_ref, adapter_base, tokenizer) -> MageModel:
    """The trained model from the final checkpoint: the base, LoRA as configured, the checkpoint's
    weights (not the export code's gathering or merging)."""
    cfg = load_config(TrainConfig, None, [*MODEL, *LORA])
    cfg.model = pretrained.read_config(adapter_base)
    model = MageModel(cfg.model, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    apply_freeze(model, cfg)
    missing, unexpected = model.load_state_dict(_consolidated(adapter_ref), strict=False)
    assert not unexpected and not [k for k in missing if k in dict(model.named_parameters())]
    return model.eval()


def test_merged_export_and_its_llava_folder_give_the_trained_logits(adapter_ref, trained, tokenizer, tmp_path):
    from transformers import LlavaForConditionalGeneration

    ids, pix = probe_inputs(trained, tokenizer)
    want = probe_logits(trained, ids, pix)
    merged, _ = pretrained.load_pretrained(os.path.join(adapter_ref, "export"))
    assert not lora.lora_layers(merged)  # a plain model: no adapters, transformers' key names
    d = (probe_logits(merged, ids, pix) - want).abs().max().item()
    llava = str(tmp_path / "llava")
    hf_llava.export_llava(os.path.join(adapter_ref, "export"), llava)
    with torch.no_grad():
        theirs = LlavaForConditionalGeneration.from_pretrained(llava, dtype=torch.float32).eval()
        d_llava = (theirs(input_ids=ids, pixel_values=pix).logits - want).abs().max().item()
    print(f"merged export max|d| {d:.2e}, its LLaVA folder {d_llava:.2e}")
    assert d <= TOL and d_llava <= TOL


def test_adapter_export_loads_with_peft_on_the_base(adapter_ref, trained, adapter_base, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids, pix = probe_inputs(trained, tokenizer)
    want = probe_logits(trained, ids, pix)
    out = os.path.join(adapter_ref, lora_export.ADAPTER_EXPORT)
    assert sorted(os.listdir(out)) == ["aligner", "llm", "mage_config.json", "tokenizer"]  # no base weights
    back, _ = load_adapter_export(out)
    d = (probe_logits(back, ids, pix) - want).abs().max().item()
    # The LLM alone, as a peft user loads it: the base folder + the adapter folder.
    llm = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(os.path.join(adapter_base, "llm")), f"{out}/llm"
    )
    embeds, _ = trained.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    with torch.no_grad():
        d_peft = (llm.eval()(inputs_embeds=embeds).logits - want).abs().max().item()
    print(f"adapter export max|d| {d:.2e}, PeftModel on the base LLM {d_peft:.2e}")
    assert d <= TOL and d_peft <= TOL


def test_zero2_with_dropout_killed_mid_save_resumes_exactly(shapes_dir, adapter_base, tmp_path):
    # LoRA's dropout draws from the torch RNG every step: the resumed run restores its state (and
    # the data loader draws its worker seed from its own generator, not from that RNG).
    zero2 = os.path.join(ROOT, "configs", "deepspeed", "zero2.json")
    ref2 = str(tmp_path / "ref2")
    args = [*_args(shapes_dir, zero2, adapter_base, dropout=True), "max_steps=4", "export=false"]
    launch([f"run_dir={ref2}", *args])
    resume_killed_mid_save(ref2, str(tmp_path / "run"), args, [3, 4])
