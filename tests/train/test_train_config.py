"""Configs: YAML instances load, overrides are typed, bad keys and combinations fail in one line."""

from __future__ import annotations

import glob
import json
import os

import pytest
from testutil import ROOT

from mage_fast.configtools import ConfigError, load_config
from mage_fast.train.config import TrainConfig
from mage_fast.train.engine import build_ds_config


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs/train/*.yaml"))))
def test_shipped_configs_load(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.max_steps >= 1


def test_overrides_are_typed():
    cfg = load_config(TrainConfig, None, ["optim.lr=3e-4", "max_steps=7", "bf16=true", "model.aligner.type=linear"])
    assert cfg.optim.lr == 3e-4 and cfg.max_steps == 7 and cfg.bf16 is True and cfg.model.aligner.type == "linear"


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["max_stepz=3"], "unknown config key max_stepz"),
        (["model.vision.hidden=3"], "unknown config key model.vision.hidden"),
        (["max_steps=lots"], "max_steps: expected an integer"),
        (["bf16=maybe"], "bf16: expected true/false"),
        (["model.aligner.type=qformer"], "model.aligner.type must be one of"),
        (["freeze_llm=true", "optim.lr_llm=1e-4"], "freeze_llm=true contradicts optim.lr_llm"),
        (["max_steps"], "not of the form key=value"),
        (["eval_every=100"], "eval_every=100 needs data.answers"),
        (["eval_delay=-5"], "eval_every and eval_delay must be >= 0"),
        (["early_stop_accuracy=1.5"], r"early_stop_accuracy must be in \[0, 1\]"),
        (["early_stop_accuracy=0.99", "data.answers=eval.json"], "early_stop_accuracy=0.99 needs eval_every > 0"),
        (["early_stop_accuracy=0.99", "eval_every=100"], "eval_every=100 needs data.answers"),
        (["data.answers_limit=-1"], "answers_limit must be an int >= 0"),
        (["optim.schedule=linear"], r"optim.schedule must be one of \('cosine', 'constant'\), got 'linear'"),
        (["model.kernels.ce_mse=fast"], r"model.kernels.ce_mse must be one of \('auto', 'torch'"),
        (["model.llm.arch=gpt2"], "model.llm.arch must be one of"),
        (["stop_signals=[SIGKILL]"], r"stop_signals\[0\] must be one of \('SIGTERM', 'SIGUSR1'"),
        (["faults.pause_after=six"], "faults.pause_after: expected an integer, got 'six'"),
        (["faults.nan_loss=[0]"], "faults.nan_loss: steps count from 1, got 0"),
        (["faults.nan_loss=[2]", "faults.inf_grad=[2]"], "step 2 is in both nan_loss and inf_grad"),
        (["faults.kill_in_save=-1"], "faults.kill_in_save must be a step >= 1 or 0"),
        (["faults.rank=-2"], r"faults.rank must be a rank or -1 \(the last\), got -2"),
    ],
)
def test_bad_config_fails_clearly(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, None, overrides)


def test_faults_hit_one_rank_and_are_off_by_default():
    assert load_config(TrainConfig, None, []).faults.step_faults(1, 2) == {}
    faults = load_config(TrainConfig, None, ["faults.nan_loss=[2,5]", "faults.inf_grad=[4]"]).faults
    assert faults.step_faults(0, 2) == {} and faults.step_faults(1, 2) == {2: "loss", 5: "loss", 4: "grad"}
    faults.rank = 0
    assert faults.step_faults(0, 2) == {2: "loss", 5: "loss", 4: "grad"} and faults.step_faults(1, 2) == {}
    faults.rank = 2
    with pytest.raises(ConfigError, match=r"faults.rank=2 but the run has 2 rank\(s\)"):
        faults.step_faults(0, 2)


def test_ds_config_filled_from_train_config(tmp_path):
    cfg = load_config(
        TrainConfig, None, ["micro_batch_size=4", "grad_accum=3", f"deepspeed={ROOT}/configs/deepspeed/zero3.json"]
    )
    ds = build_ds_config(cfg, world=2)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] is False
    bad = tmp_path / "ds.json"
    bad.write_text('{"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 3}}')
    cfg.deepspeed = str(bad)
    with pytest.raises(ConfigError, match="train_micro_batch_size_per_gpu=8 disagrees"):
        build_ds_config(cfg, world=2)


@pytest.mark.parametrize("stage", [0, 1])
def test_zero_stages_without_overflow_path_are_refused(tmp_path, stage):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    cfg = load_config(TrainConfig, None, [f"deepspeed={ds}"])
    with pytest.raises(ConfigError, match=f"zero_optimization.stage={stage} is not supported; use stage 2"):
        build_ds_config(cfg, world=2)


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["deepspeed=configs/deepspeed/nope.json"], r"deepspeed: 'configs/deepspeed/nope.json' is not a file"),
        (["data.train=missing.json"], r"data.train: '.*missing.json' is not a file"),
        (["model.llm.path=/ckpt/none"], r"model.llm.path: '/ckpt/none' is not a folder \(models load from local"),
        (["model.vision.path=/ckpt/none"], r"model.vision.path: '/ckpt/none' is not a folder"),
        (["init_from=/runs/none/export"], r"init_from: '/runs/none/export' is not a folder"),
        (["data.answers=gone.json"], r"data.answers: '.*gone.json' is not a file"),
    ],
)
def test_missing_paths_fail_in_one_line(shapes_dir, overrides, match):
    from mage_fast.train.config import check_paths

    base = [f"data.root={shapes_dir}", "data.train=stage1.json", f"deepspeed={ROOT}/configs/deepspeed/zero3.json"]
    cfg = load_config(TrainConfig, None, base)
    check_paths(cfg)  # the shapes world and the shipped json: all there
    cfg = load_config(TrainConfig, None, base + overrides)
    cwd = os.getcwd()
    os.chdir(ROOT)  # relative paths resolve as in a run started from the repository root
    try:
        with pytest.raises(ConfigError, match=match):
            check_paths(cfg)
    finally:
        os.chdir(cwd)


def test_every_registered_aligner_builds_with_its_token_count():
    """The registry is the enumeration: each entry builds from the config and gives T tokens."""
    import torch

    from mage_fast.model.aligner import ALIGNERS, build_aligner
    from mage_fast.model.config import AlignerConfig, KernelConfig

    assert {"ian", "mlp2x_gelu", "linear", "pool_mlp"} <= set(ALIGNERS)
    for name in ALIGNERS:
        cfg = load_config(TrainConfig, None, [f"model.aligner.type={name}", "model.aligner.num_heads=2"]).model.aligner
        assert isinstance(cfg, AlignerConfig)
        aligner = build_aligner(cfg, 16, 8, 5, KernelConfig(patch_pool="torch", ian_projection="torch"))
        z = aligner(torch.randn(3, 25, 16))
        assert z.shape == (3, cfg.num_tokens(5), 8), name


def test_zero3_strict_is_zero3_with_every_parameter_partitioned():
    """configs/deepspeed/zero3_strict.json differs from zero3.json in the persistence threshold only."""
    strict, base = (
        json.load(open(os.path.join(ROOT, f"configs/deepspeed/{n}.json"))) for n in ("zero3_strict", "zero3")
    )
    assert strict["zero_optimization"].pop("stage3_param_persistence_threshold") == 0
    assert base["zero_optimization"].pop("stage3_param_persistence_threshold") > 0
    assert strict == base


def test_eval_delay_skips_the_early_checks_not_the_last():
    from mage_fast.train.loop import _due

    assert [s for s in range(1, 1001) if _due(200, s, 1000, 500)] == [600, 800, 1000]
    assert [s for s in range(1, 11) if _due(2, s, 10)] == [2, 4, 6, 8, 10]
    assert [s for s in range(1, 4) if _due(5, s, 3, 8)] == [3]  # the end runs however late the delay
