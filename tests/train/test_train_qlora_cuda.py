"""QLoRA on CUDA, where bitsandbytes computes with its CUDA kernels: a world of one in this process
(nccl), the tiny mlp2x_gelu model with its LLM's block linears 4-bit NF4 (double quantisation),
peft's LoRA on them, the real engine glue under ZeRO-2 (`mage_fast.train.engine`) and the
training loop's own `train_step` on one synthetic batch.

One training of 8 steps (module fixture) carries the assertions: bitsandbytes loaded its CUDA
library and the 4-bit layers live on the GPU, the losses fall, only the adapters and the aligner
are in the optimizer, the 4-bit base after training is bit for bit the base before it, a
DeepSpeed checkpoint loads into an engine built on another base (the load restores the 4-bit base
it holds), the peft adapter folder loads onto the base quantised afresh and the merged state (the
dequantised base plus the adapters) gives the trained logits.

Skipped without a GPU: `make gpu-check` runs it (its `qlora` step); the CPU runs of the same
model are tests/train/test_train_qlora.py and test_train_qlora_units.py.
"""

from __future__ import annotations

import os

import pytest
import torch
from testutil import ROOT, tiny_model_config

from mage_fast.configtools import load_config
from mage_fast.model import lora, qlora
from mage_fast.model.mllm import MageModel
from mage_fast.train.config import TrainConfig

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="QLoRA on CUDA needs a GPU (bitsandbytes' CUDA kernels); make gpu-check"
)
bnb = pytest.importorskip("bitsandbytes", reason="QLoRA's 4-bit layers (make test installs requirements-test.txt)")

QLORA = ["lora.enable=true", "lora.quantize=nf4", "lora.r=4", "lora.alpha=8", "lora.lr=1e-2", "lora.dropout=0.0"]
RUN = ["micro_batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=1", f"deepspeed={ROOT}/configs/deepspeed/zero2.json"]
VOCAB, STEPS, TOL = 100, 8, 1e-5


def _engine(seed: int):
    """(engine, model): the QLoRA model from seed `seed`'s random base under ZeRO-2 on the GPU."""
    from mage_fast.train.engine import apply_freeze, build_ds_config, build_model, initialize

    cfg = load_config(TrainConfig, None, [*QLORA, *RUN])
    cfg.model = tiny_model_config("mlp2x_gelu")
    ds = build_ds_config(cfg, 1)
    torch.manual_seed(seed)
    model, _ = build_model(cfg, ds, VOCAB, image_token_id=VOCAB - 1)
    apply_freeze(model, cfg)  # quantises on the CPU, as a run does after init_from
    return initialize(model, cfg, ds), model


def _packed(model: MageModel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CPU copies of each 4-bit layer's packed weight and its (8-bit) absmax, by layer name."""
    return {
        n: (m.weight.data.to("cpu", copy=True), m.weight.quant_state.absmax.to("cpu", copy=True))
        for n, m in qlora.quantized_layers(model).items()
    }


@torch.no_grad()
def _logits(model: MageModel, llm: torch.nn.Module | None = None) -> torch.Tensor:
    """`llm`'s (default: the model's) logits (2, T, V) on a fixed batch embedded by `model`."""
    dev = next(model.aligner.parameters()).device
    ids = torch.tensor([[1, *[model.image_token_id] * model.num_image_tokens, 7, 8, 9]] * 2, device=dev)
    pix = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(2)).to(dev)
    embeds, _ = model.embed(ids, pix, torch.ones(2, dtype=torch.long, device=dev))
    return (llm or model.llm)(inputs_embeds=embeds).logits


@pytest.fixture(scope="module")
def run():
    """The QLoRA engine after STEPS steps on one batch: (engine, model, losses, base before training)."""
    from benchmarks.bench_step import StepBench, make_batch
    from mage_fast.train.dist import init_distributed, shutdown
    from mage_fast.train.step import train_step

    init_distributed()
    engine, model = _engine(seed=0)
    before = _packed(model)
    batch = make_batch(model, StepBench(seq_len=32, vocab_size=VOCAB, caption_len=8), 4, engine.device)
    losses = [train_step(engine, [batch], 0, 1).loss for _ in range(STEPS)]
    print("QLoRA on CUDA losses:", losses)
    yield engine, model.eval(), losses, before
    shutdown()


def test_the_4bit_layers_run_on_the_gpu_with_bitsandbytes_cuda_library(run):
    from bitsandbytes.cextension import CudaBNBNativeLibrary, lib

    engine, model, _, _ = run
    assert isinstance(lib, CudaBNBNativeLibrary), type(lib)  # not the CPU library
    layers = qlora.quantized_layers(model)
    assert len(layers) == 7 * model.cfg.llm.num_layers and engine.device.type == "cuda"
    for layer in layers.values():
        w = layer.weight
        assert isinstance(w, bnb.nn.Params4bit) and w.dtype == torch.uint8 and w.is_cuda and not w.requires_grad
        assert w.quant_state.quant_type == "nf4" and w.quant_state.nested and w.quant_state.absmax.is_cuda


def test_losses_fall_and_only_adapters_and_aligner_train(run):
    from mage_fast.train.engine import optimizer_state_bytes, param_counts

    engine, model, losses, _ = run
    assert losses[-1] < losses[0] and min(losses[STEPS // 2 :]) < min(losses[: STEPS // 2])
    assert {g["name"] for g in engine.optimizer.param_groups} == {"aligner", "llm_lora"}
    n, state = param_counts(engine.module), optimizer_state_bytes(engine)
    print(f"params {n}, optimizer state {state} B")
    assert 12 * n["trainable"] <= state <= 12 * n["trainable"] + 4096  # fp32 master + 2 moments, no base


def test_the_4bit_base_is_bit_identical_after_training(run):
    _, model, _, before = run
    after = _packed(model)
    assert after.keys() == before.keys()
    for name, (w, absmax) in after.items():
        assert torch.equal(w, before[name][0]) and torch.equal(absmax, before[name][1]), name


def test_a_checkpoint_loads_with_its_4bit_base_into_an_engine_on_another_base(run, tmp_path):
    engine, model, _, _ = run
    engine.save_checkpoint(str(tmp_path), tag="t")
    other, other_model = _engine(seed=1)  # another random base: other packed weights
    assert not torch.equal(_logits(other_model.eval()), _logits(model))
    other.load_checkpoint(str(tmp_path), tag="t")
    torch.testing.assert_close(_logits(other_model), _logits(model), atol=0, rtol=0)
    got = _packed(other_model)
    assert all(torch.equal(got[n][0], w) for n, (w, _) in _packed(model).items())


def test_adapter_folder_and_merged_state_give_the_trained_logits(run, tmp_path):
    from peft import PeftModel

    from mage_fast.train.engine import gathered_state

    _, model, _, _ = run
    want = _logits(model)
    folder = os.path.join(tmp_path, "llm")
    lora.write_adapter(folder, model.llm, gathered_state(model.llm))
    torch.manual_seed(0)  # the same random base as the run's, quantised afresh
    fresh = MageModel(model.cfg, VOCAB, VOCAB - 1).llm
    qlora.quantize_llm(fresh, torch.float32)
    peft_llm = PeftModel.from_pretrained(fresh.cuda(), folder).eval()
    d_peft = (_logits(model, peft_llm) - want).abs().max().item()
    torch.manual_seed(0)
    plain = MageModel(model.cfg, VOCAB, VOCAB - 1).llm
    plain.load_state_dict(lora.merged_state(model.llm, gathered_state(model.llm)))
    d_merged = (_logits(model, plain.cuda().eval()) - want).abs().max().item()
    print(f"peft folder on the 4-bit base max|d| {d_peft:.2e}, merged {d_merged:.2e}")
    assert d_peft <= TOL and d_merged <= TOL
