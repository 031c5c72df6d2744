"""The adapter launch tests' shared parts (LoRA and QLoRA): the base export a run starts from, the
probe batch whose logits compare a trained model with its exports, and the checks every adapter
run passes (`AdapterRunChecks`)."""

from __future__ import annotations

import pytest
import torch
from launchutil import (
    TINY,
    assert_losses_fall,
    assert_only_trainable_state,
    history_by_step,
    resume_killed_mid_save,
    resume_on_one_rank,
)

from mage_fast.configtools import load_config
from mage_fast.export import pretrained
from mage_fast.model.mllm import MageModel
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import export_state

# The model of the adapter runs and of the base export they start from: the tiny model with the
# mlp2x_gelu aligner (LLaVA's, so the merged export also loads as a LLaVA folder).
MODEL = [*TINY, "model.aligner.type=mlp2x_gelu"]


def write_base_export(out: str, tokenizer, overrides: list[str]) -> str:
    """A random-init model of `overrides` (seed 0) written as the export at `out`: the "stage 1"
    model an adapter run starts from."""
    torch.manual_seed(0)
    cfg = load_config(TrainConfig, None, overrides)
    model = MageModel(cfg.model, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    pretrained.write_export(out, model, tokenizer, export_state(model))
    return out


def probe_inputs(model: MageModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of <bos>, the image tokens, four text ids: ids (2, T) and pixels (2, 3, S, S)."""
    g = torch.Generator().manual_seed(1)
    image = tokenizer.convert_tokens_to_ids("<image>")
    ids = torch.tensor([[tokenizer.bos_token_id, *[image] * model.num_image_tokens, 7, 8, 9, 10]] * 2)
    return ids, torch.randn(2, 3, model.image_size, model.image_size, generator=g)


@torch.no_grad()
def probe_logits(model: MageModel, ids: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """The LLM's logits (2, T, V) on the embedded probe batch, one image per row."""
    embeds, _ = model.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    return model.llm(inputs_embeds=embeds).logits


class AdapterRunChecks:
    """The checks every adapter run passes, one test each. A test module subclasses it as
    `Test<Kind>Run` (setting LABEL) and provides the module fixture `adapter_args`: a run's
    arguments but its run_dir, 6 steps, checkpoints at 2, 4 and 6, `faults.probe=true` (the lr per
    param group). `adapter_ref` (tests/train/conftest.py) is the 2-rank run of them. The resumed
    launches write no export: nothing here reads one."""

    LABEL = "adapter"

    def test_losses_fall_and_only_adapters_and_aligner_train(self, adapter_ref):
        h = history_by_step(adapter_ref)
        assert_losses_fall(h, 6, self.LABEL)
        # The optimizer's param groups, read every step: none for the frozen tower or LLM base.
        assert all(set(r["lr"]) == {"aligner", "llm_lora"} for r in h.values())
        assert_only_trainable_state(adapter_ref)

    def test_killed_mid_save_resumes_with_the_uninterrupted_losses(self, adapter_ref, adapter_args, tmp_path):
        resume_killed_mid_save(adapter_ref, str(tmp_path / "run"), [*adapter_args, "export=false"], [3, 4, 5, 6])

    def test_resumes_on_one_rank(self, adapter_ref, adapter_args, tmp_path):
        # Same samples per step (1 x 8 rows = 2 x 4) through DeepSpeed's universal checkpoint.
        args = [*adapter_args, "micro_batch_size=8", "export=false"]
        got = resume_on_one_rank(adapter_ref, str(tmp_path / "one"), args, "step00000004", [5, 6])
        assert got[5]["lr"] == pytest.approx(history_by_step(adapter_ref)[5]["lr"])
