"""Training with the Triton kernels matches training with the torch backends.

1. Convergence, one process: the tiny MAGE (IAN aligner) trained 20 AdamW steps on the shapes
   world with all three ops on backend=torch, then on backend=triton (the interpreter on CPU), from
   the same initial weights on the same batches: the per-step losses agree.
2. ZeRO-3, two ranks: real `deepspeed` launches with every parameter partitioned, ce_mse on torch
   and on triton (the fused loss reads the gathered lm_head weight): the per-step losses agree.
   And both agree with a ZeRO-2 run of the triton ce_mse, where every rank holds the whole
   lm_head: had the weight gradient that ZeRO-3 computes from the gathered weight not reached its
   partition, lm_head would not train there and the losses would part after the first steps.
"""

from __future__ import annotations

import os

import pytest
import torch
from launchutil import TINY, launch, run_summary
from testutil import ROOT, tiny_model_config

from mage_fast.data import Collator, ImageTransform, LlavaDataset
from mage_fast.data.config import DataConfig
from mage_fast.model.config import KernelConfig
from mage_fast.model.mllm import MageModel
from mage_fast.ops import _triton

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        _triton.unavailable_reason(torch.device("cpu")) is not None and not torch.cuda.is_available(),
        reason="Triton needs a GPU or the interpreter (TRITON_INTERPRET=1)",
    ),
]
STEPS = 20
# fp32 on both sides with the same rounding points: the backends differ by summation order only
# (~1e-7 relative per op), which 20 Adam steps could amplify; measured 1.1e-7 (CPU interpreter).
CONV_RTOL = 1e-4
# Two ranks, fp32 (bf16 off), 8 steps: measured 3.6e-8 on the losses, 0 on the eval loss.
ZERO3_RTOL = 1e-4


def _train(kernels: str, tokenizer, shapes_dir: str, device: torch.device) -> list[float]:
    """Losses of STEPS AdamW steps of the tiny MAGE with every op on backend `kernels`."""
    cfg = tiny_model_config("ian")
    cfg.kernels = KernelConfig(patch_pool=kernels, ian_projection=kernels, ce_mse=kernels)
    torch.manual_seed(0)
    model = MageModel(cfg, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>")).to(device)
    data = LlavaDataset.from_config(
        DataConfig(root=shapes_dir, train="stage1.json"), tokenizer,
        transform=ImageTransform(model.image_size), num_image_tokens=model.num_image_tokens,
    )  # fmt: skip
    collate = Collator(tokenizer.pad_token_id, model.image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(STEPS):
        idx = [(4 * step + i) % len(data) for i in range(4)]
        batch = collate([data[i] for i in idx])
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        out = model(**batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    return losses


def test_convergence_torch_vs_triton(tokenizer, shapes_dir) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref = _train("torch", tokenizer, shapes_dir, device)
    got = _train("triton", tokenizer, shapes_dir, device)
    rel = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, ref)]
    for i in (0, 4, 9, 14, 19):
        print(f"step {i + 1:2d}: torch {ref[i]:.6f} triton {got[i]:.6f}")
    print(f"max relative difference over {STEPS} steps: {max(rel):.3e} (step {rel.index(max(rel)) + 1})")
    assert ref[-1] < 0.7 * ref[0], f"the tiny model did not learn: {ref[0]:.4f} -> {ref[-1]:.4f}"
    assert max(rel) <= CONV_RTOL


def _initial_export(tokenizer, out: str) -> None:
    """The TINY model, random-init outside DeepSpeed, exported: every run starts from these weights
    (zero.Init draws a random init other than plain construction, so ZeRO-2 and ZeRO-3 runs would
    otherwise start apart)."""
    from mage_fast.configtools import load_config
    from mage_fast.export import pretrained
    from mage_fast.train.config import TrainConfig
    from mage_fast.train.engine import export_state

    cfg = load_config(TrainConfig, None, TINY)
    torch.manual_seed(0)
    model = MageModel(cfg.model, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    pretrained.write_export(out, model, tokenizer, export_state(model))


def test_two_rank_zero3_triton_ce_mse_matches_torch(tokenizer, shapes_dir, strict_zero3, tmp_path) -> None:
    runs = {}
    zero2 = os.path.join(ROOT, "configs/deepspeed/zero2.json")
    init = str(tmp_path / "init")
    _initial_export(tokenizer, init)
    for name, backend, ds in (("torch", "torch", strict_zero3), ("triton", "triton", strict_zero3),
                              ("triton_zero2", "triton", zero2)):  # fmt: skip
        run = str(tmp_path / name)
        args = [f"run_dir={run}", f"data.root={shapes_dir}", f"deepspeed={ds}", *TINY, f"init_from={init}",
                "max_steps=8", "export=false", f"model.kernels.ce_mse={backend}"]  # fmt: skip
        launch(args)  # ranks inherit TRITON_INTERPRET=1 from conftest (no GPU)
        runs[name] = run_summary(run)
        assert runs[name]["world_size"] == 2
        assert runs[name]["zero_stage"] == (2 if ds == zero2 else 3)
    with open(os.path.join(tmp_path / "triton", "config.yaml")) as f:
        assert "ce_mse: triton" in f.read()
    ref = [h["loss"] for h in runs["torch"]["history"]]
    got = [h["loss"] for h in runs["triton"]["history"]]
    assert len(ref) == len(got) == 8
    rel = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(got, ref)]
    for i, (a, b) in enumerate(zip(ref, got)):
        print(f"step {i + 1}: torch {a:.6f} triton {b:.6f}")
    ev_t, ev_g = runs["torch"]["eval_loss"], runs["triton"]["eval_loss"]
    print(f"max relative loss difference {max(rel):.3e}; eval loss torch {ev_t:.6f} triton {ev_g:.6f}")
    assert max(rel) <= ZERO3_RTOL
    assert abs(ev_t - ev_g) <= ZERO3_RTOL * abs(ev_t)
    z2 = [h["loss"] for h in runs["triton_zero2"]["history"]]
    rel2 = [abs(a - b) / max(abs(b), 1e-6) for a, b in zip(z2, got)]
    print(f"ZeRO-2 vs ZeRO-3 (triton): losses {[round(x, 6) for x in z2]}; max relative difference {max(rel2):.3e}")
    assert len(z2) == 8 and max(rel2) <= ZERO3_RTOL
    norms = [
        (a["grad_norm"], b["grad_norm"]) for a, b in zip(runs["triton_zero2"]["history"], runs["triton"]["history"])
    ]
    assert all(a > 0 and abs(a - b) <= 1e-3 * b for a, b in norms), norms  # the same global gradient
