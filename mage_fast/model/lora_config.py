"""The `lora:` section of the train config (torch-free: the CLI checks a config before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

FullPart = Literal["aligner", "vision_tower"]
Quantize = Literal["none", "nf4"]
LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]  # Llama, Qwen2
VISION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # CLIP, SigLIP encoder layers


@dataclass
class LoraConfig:
    """LoRA fine-tuning (off by default). With `enable` the whole base is frozen; adapters of rank
    `r` (scaling alpha / r) go on the linear layers named in `target_modules` inside the LLM's
    blocks (`model.layers.N.`; never lm_head or the embeddings), and on the tower's encoder layers
    with `vision`; the parts in `train_fully` train all their weights. Learning rates: adapters
    `lr` (None: optim.lr), aligner optim.lr_aligner, tower optim.lr_vision."""

    enable: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLM_TARGETS))
    vision: bool = False  # adapters on the vision tower's encoder layers too
    vision_target_modules: list[str] = field(default_factory=lambda: list(VISION_TARGETS))
    train_fully: list[FullPart] = field(default_factory=lambda: ["aligner"])
    lr: float | None = None  # the adapters' learning rate; None: optim.lr
    quantize: Quantize = "none"  # nf4: the LLM blocks 4-bit NF4, double quantisation (QLoRA; bitsandbytes, ZeRO-2)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lora.lr must be > 0, got {self.lr}")
        if not self.target_modules:
            raise ValueError("lora.target_modules is empty: name the LLM's linear layers to adapt")
        bad = [p for p in self.train_fully if p not in get_args(FullPart)]
        if bad:
            raise ValueError(f"lora.train_fully: {bad[0]!r} is not one of {get_args(FullPart)}")
        if self.quantize not in get_args(Quantize):
            raise ValueError(f"lora.quantize must be one of {get_args(Quantize)}, got {self.quantize!r}")
        if self.quantize != "none" and not self.enable:
            raise ValueError(f"lora.quantize={self.quantize} quantises the base for LoRA: it needs lora.enable=true")
        if self.vision and "vision_tower" in self.train_fully:
            raise ValueError(
                "lora.vision=true and vision_tower in lora.train_fully: adapters or full training, not both"
            )

    def trains(self, part: str) -> bool:
        """Whether `part` ("vision_tower", "aligner", "llm") has trainable weights under LoRA."""
        return part == "llm" or part in self.train_fully or (part == "vision_tower" and self.vision)
