"""Typed model configuration. YAML files under configs/train/ are instances of these (key `model`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

ALIGNER_TYPES = ("ian", "mlp2x_gelu", "linear", "pool_mlp", "sam")
VISION_TYPES = ("clip", "siglip")
BACKENDS = ("auto", "torch", "cpp", "triton", "cuda")


@dataclass
class VisionConfig:
    """Vision tower: a local HF folder (`path`) or a small random-init config from the fields below."""

    type: str = "clip"  # clip | siglip (ignored when `path` has a config.json: its model_type wins)
    path: str | None = None
    image_size: int = 48
    patch_size: int = 8
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    # LLaVA's feature layer: hidden_states[select_layer]; layers after it are dropped at build time.
    select_layer: int = -2

    def __post_init__(self) -> None:
        if self.type not in VISION_TYPES:
            raise ValueError(f"model.vision.type must be one of {VISION_TYPES}, got {self.type!r}")
        if self.path is None and self.image_size % self.patch_size:
            raise ValueError(
                f"model.vision.image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class AlignerConfig:
    """The aligner (LLaVA's mm_projector). `ian` is MAGE's Intelligent Alignment Network."""

    type: str = "ian"
    pool_k: int = 2  # patch pooling factor of ian / pool_mlp
    num_heads: int = 4  # cross-attention heads of the semantic enhancement block
    mlp_ratio: float = 2.0  # hidden width of the SEB MLP, in units of the LLM width
    # ian: a learned embedding per visual token (its grid cell), zero-initialised so Z = b still
    # holds at step 0. The LLM's RoPE gives only relative positions in q·k, nothing in the values,
    # so "where is X?" needs the cell in the token's content; the tower's own position embedding
    # reaches the tokens only weakly after pooling.
    pos_embed: bool = True
    # sam: the context of each image is a softmax over all the sample's images (the SAM authors'
    # code) or over the other images only (their paper); see mage_fast/model/sam.py.
    sam_include_self: bool = True

    def __post_init__(self) -> None:
        if self.type not in ALIGNER_TYPES:
            raise ValueError(f"model.aligner.type must be one of {ALIGNER_TYPES}, got {self.type!r}")
        if self.pool_k < 1:
            raise ValueError(f"model.aligner.pool_k must be >= 1, got {self.pool_k}")

    def num_tokens(self, grid: int) -> int:
        """Visual tokens per image for a g×g patch grid."""
        if self.type in ("ian", "pool_mlp", "sam"):
            return math.ceil(grid / self.pool_k) ** 2
        return grid * grid


@dataclass
class LLMConfig:
    """Causal LLM: a local HF folder (`path`) or a small random-init Llama/Qwen2 config."""

    path: str | None = None
    arch: str = "llama"  # llama | qwen2, for random init
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 512
    # auto: flash_attention_2 if flash-attn is importable (and on CUDA), else sdpa.
    attn_implementation: str = "auto"

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "qwen2"):
            raise ValueError(f"model.llm.arch must be llama or qwen2, got {self.arch!r}")


@dataclass
class KernelConfig:
    """Which backend each fused op runs on (auto picks the fastest correct one for the device)."""

    patch_pool: str = "auto"
    ian_projection: str = "auto"
    ce_mse: str = "auto"

    def __post_init__(self) -> None:
        for name in ("patch_pool", "ian_projection", "ce_mse"):
            if getattr(self, name) not in BACKENDS:
                raise ValueError(f"model.kernels.{name} must be one of {BACKENDS}, got {getattr(self, name)!r}")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    # Tokenizer folder; empty means the LLM's folder (or, in training, <data.root>/tokenizer).
    tokenizer: str = ""
    mse_lambda: float = 1.0  # λ of the MSE alignment term

    def __post_init__(self) -> None:
        if self.mse_lambda < 0:
            raise ValueError(f"model.mse_lambda must be >= 0, got {self.mse_lambda}")
