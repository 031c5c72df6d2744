"""Typed training configuration; configs/train/*.yaml are instances of TrainConfig."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, get_args

from mage_fast.configtools import ConfigError
from mage_fast.data.config import DataConfig
from mage_fast.model.config import ModelConfig
from mage_fast.model.lora_config import LoraConfig
from mage_fast.toolcall.config import ToolsConfig

Schedule = Literal["cosine", "constant"]
# Signals that ask for a checkpoint and a clean exit (mage_fast.train.preempt).
StopSignal = Literal["SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"]


@dataclass
class OptimConfig:
    """AdamW with per-part learning rates (None: use `lr`), warmup then cosine or constant."""

    lr: float = 1e-3
    lr_vision: float | None = None
    lr_aligner: float | None = None
    lr_llm: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 50
    schedule: Schedule = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in get_args(Schedule):
            raise ValueError(f"optim.schedule must be one of {get_args(Schedule)}, got {self.schedule!r}")
        for name in ("lr", "lr_vision", "lr_aligner", "lr_llm"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"optim.{name} must be > 0, got {v}")


@dataclass
class GradientCheckpointing:
    """Activation (gradient) checkpointing per part: recompute each layer in backward. LLaVA turns
    it on for the LLM in every stage; a 13B model with 2048-token rows does not fit without it."""

    llm: bool = False
    vision: bool = False


@dataclass
class FaultConfig:
    """Test-only switches (docs/survival.md): faults a test injects into a real launch to check what
    survives them, and the per-step probe its assertions read. All off by default; real runs
    leave this section out."""

    nan_loss: list[int] = field(default_factory=list)  # steps whose loss is NaN on `rank`
    inf_grad: list[int] = field(default_factory=list)  # steps with an Inf in `rank`'s reduced gradients
    rank: int = -1  # the rank nan_loss and inf_grad hit; -1: the last rank
    kill_in_save: int = 0  # every rank SIGKILLs itself while saving this step, before the marker; 0: off
    # Every rank waits after this step until a stop signal reaches it or `pause_s` pass, so a
    # test's signal lands between two steps however fast they are; 0: off.
    pause_after: int = 0
    pause_s: float = 30.0
    # Each history record adds each group's learning rate, the scheduler's step count and a
    # checksum of the fp32 master weights (engine.step_probe).
    probe: bool = False

    def __post_init__(self) -> None:
        for name in ("nan_loss", "inf_grad"):
            bad = [s for s in getattr(self, name) if s < 1]
            if bad:
                raise ValueError(f"faults.{name}: steps count from 1, got {bad[0]}")
        both = sorted(set(self.nan_loss) & set(self.inf_grad))
        if both:
            raise ValueError(f"faults: step {both[0]} is in both nan_loss and inf_grad; one fault per step")
        if self.rank < -1:
            raise ValueError(f"faults.rank must be a rank or -1 (the last), got {self.rank}")
        for name in ("kill_in_save", "pause_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"faults.{name} must be a step >= 1 or 0 (off), got {getattr(self, name)}")
        if self.pause_s <= 0:
            raise ValueError(f"faults.pause_s must be > 0, got {self.pause_s}")

    def step_faults(self, rank: int, world: int) -> dict[int, str]:
        """Step -> "loss" or "grad": the faults this rank injects (none on other ranks)."""
        target = world - 1 if self.rank == -1 else self.rank
        if target >= world:
            raise ConfigError(f"faults.rank={self.rank} but the run has {world} rank(s)")
        if rank != target:
            return {}
        return {**{s: "loss" for s in self.nan_loss}, **{s: "grad" for s in self.inf_grad}}


@dataclass
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    gradient_checkpointing: GradientCheckpointing = field(default_factory=GradientCheckpointing)
    # An exported model folder to start from (stage 2 from stage 1); its architecture must match.
    init_from: str | None = None
    freeze_vision: bool = False
    freeze_aligner: bool = False
    freeze_llm: bool = False
    max_steps: int = 1000  # optimizer steps
    micro_batch_size: int = 16  # per rank
    grad_accum: int = 1
    bf16: bool = False
    deepspeed: str = "configs/deepspeed/zero3.json"
    save_every: int = 0  # steps between checkpoints; 0: only at the end
    keep_last: int = 2  # complete checkpoints kept
    resume: bool = True  # continue from the newest complete checkpoint in run_dir/checkpoints
    # A checkpoint of another world size: convert it to DeepSpeed's universal format and load that.
    resume_resize: bool = True
    export: bool = True  # write run_dir/export (HF-style parts) at the end
    log_every: int = 10
    eval_every: int = 0  # steps between held-out accuracy evals on data.answers; 0: only at the end
    eval_delay: int = 0  # no periodic eval before this step (HF's eval_delay); the one at the end always runs
    # Stop (checkpoint, final eval, export) at the first held-out check where every question type
    # is >= this; 0: off. The budget is then not spent past convergence.
    early_stop_accuracy: float = 0.0
    threads: int = 0  # torch CPU threads per rank; 0: cores / local ranks
    deterministic: bool = False
    max_bad_steps: int = 5  # abort after this many non-finite steps (loss or grad norm) in a row
    # Any of these on any rank: finish the step, save a checkpoint, exit 75 (mage_fast.train.preempt).
    stop_signals: list[StopSignal] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    tools: ToolsConfig = field(default_factory=ToolsConfig)  # the executor's tools (tools.score, chat)
    lora: LoraConfig = field(default_factory=LoraConfig)  # LoRA/QLoRA fine-tuning (docs/lora.md)
    faults: FaultConfig = field(default_factory=FaultConfig)  # test-only fault injection (docs/survival.md)

    def __post_init__(self) -> None:
        for name in ("max_steps", "micro_batch_size", "grad_accum", "keep_last", "log_every", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0 or self.eval_delay < 0:
            raise ValueError(f"eval_every and eval_delay must be >= 0, got {self.eval_every} and {self.eval_delay}")
        if self.eval_every and not self.data.answers:
            raise ValueError(f"eval_every={self.eval_every} needs data.answers (held-out rows with reference answers)")
        if not 0.0 <= self.early_stop_accuracy <= 1.0:
            raise ValueError(f"early_stop_accuracy must be in [0, 1] (0: off), got {self.early_stop_accuracy}")
        if self.early_stop_accuracy and not (self.eval_every and self.data.answers):
            raise ValueError(
                f"early_stop_accuracy={self.early_stop_accuracy} needs eval_every > 0 and data.answers: "
                f"the held-out checks decide when to stop"
            )
        bad = [s for s in self.stop_signals if s not in get_args(StopSignal)]
        if bad:
            raise ValueError(f"stop_signals: {bad[0]!r} is not one of {get_args(StopSignal)}")
        if self.save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {self.save_every}")
        for part in ("vision", "aligner", "llm"):
            if getattr(self, f"freeze_{part}") and getattr(self.optim, f"lr_{part}") is not None:
                raise ValueError(
                    f"freeze_{part}=true contradicts optim.lr_{part}={getattr(self.optim, f'lr_{part}')}: "
                    f"a frozen part has no learning rate"
                )
        if self.freeze_vision and self.freeze_aligner and self.freeze_llm:
            raise ValueError("freeze_vision, freeze_aligner and freeze_llm are all true: nothing to train")
        if self.lora.enable:
            check_lora(self)


def check_lora(cfg: TrainConfig) -> None:
    """Under LoRA the `lora:` section decides what trains: a freeze switch may not contradict it,
    and the frozen LLM base has no learning rate of its own (its adapters train at lora.lr)."""
    if cfg.optim.lr_llm is not None:
        raise ValueError(
            f"lora.enable=true with optim.lr_llm={cfg.optim.lr_llm}: the LLM's base is frozen under LoRA; "
            f"set the adapters' learning rate with lora.lr"
        )
    for part, short in (("vision_tower", "vision"), ("aligner", "aligner"), ("llm", "llm")):
        if getattr(cfg, f"freeze_{short}") and cfg.lora.trains(part):
            why = "lora.train_fully lists it" if part in cfg.lora.train_fully else "its adapters train"
            raise ValueError(f"freeze_{short}=true contradicts lora: {why} (lora.enable=true)")


def check_paths(cfg: TrainConfig) -> None:
    """Every file and folder the run reads must exist: one `ConfigError` line naming the key,
    before any rank builds a model (not a traceback from deep inside transformers or DeepSpeed).
    The `mage_fast.train` entry calls it on every rank before `train`."""
    d = cfg.data
    need = [("deepspeed", cfg.deepspeed, os.path.isfile), ("data.train", os.path.join(d.root, d.train), os.path.isfile)]
    if d.eval:
        need.append(("data.eval", os.path.join(d.root, d.eval), os.path.isfile))
    if d.answers:
        need.append(("data.answers", os.path.join(d.root, d.answers), os.path.isfile))
    for key, value in (
        ("init_from", cfg.init_from),
        ("model.vision.path", cfg.model.vision.path),
        ("model.llm.path", cfg.model.llm.path),
        ("model.tokenizer", cfg.model.tokenizer),
    ):
        if value:
            need.append((key, value, os.path.isdir))
    for key, path, exists in need:
        if not exists(path):
            what = "file" if exists is os.path.isfile else "folder (models load from local folders; no hub)"
            raise ConfigError(f"{key}: {path!r} is not a {what}")
