"""Typed model configuration. YAML files under configs/train/ are instances of these (key `model`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from mage_fast.model.aligner_tokens import num_tokens
from mage_fast.template_names import TEMPLATE_NAMES

VisionType = Literal["clip", "siglip"]
LLMArch = Literal["llama", "qwen2"]
Backend = Literal["auto", "torch", "cpp", "triton", "cuda"]
AttnImpl = Literal["auto", "sdpa", "sdpa_packed", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]


def check_choice(key: str, value: str, choices: object) -> None:
    """A ValueError naming the key unless `value` is one of the `Literal` type `choices`."""
    if value not in get_args(choices):
        raise ValueError(f"{key} must be one of {get_args(choices)}, got {value!r}")


def hf_sizes(cfg: VisionConfig | LLMConfig) -> dict[str, int]:
    """The sizes every transformer config shares, under Hugging Face's names."""
    return {
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
    }


@dataclass
class VisionConfig:
    """Vision tower: a local HF folder (`path`) or a small random-init config from the fields below."""

    type: VisionType = "clip"  # ignored when `path` has a config.json: its model_type wins
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
        check_choice("model.vision.type", self.type, VisionType)
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

    # A name in mage_fast.model.aligner.ALIGNERS: the registry is the enumeration, so a new
    # aligner is one entry there and no Literal here to keep in step with it.
    type: str = "ian"
    pool_k: int = 2  # patch pooling factor of ian / pool_mlp
    num_heads: int = 4  # cross-attention heads of the semantic enhancement block
    mlp_ratio: float = 2.0  # hidden width of the SEB MLP, in units of the LLM width
    # ian: a learned embedding per visual token (its grid cell), zero-initialised so Z = b still
    # holds at step 0. The LLM's RoPE gives only relative positions in q·k, nothing in the values,
    # so "where is X?" needs the cell in the token's content; the tower's own position embedding
    # reaches the tokens only weakly after pooling.
    pos_embed: bool = True
    # ian: the std of that embedding's normal init, in units of Z's elements (LayerNorm'd, about
    # unit variance). 0 starts it at zero (Z = b at step 0). Started at zero it must grow from
    # gradients alone before the LLM can tell the cells apart; at 1.0 every cell is distinct from
    # step 0 (docs/demo.md measures both).
    pos_init_std: float = 0.0
    # sam: the context of each image is a softmax over all the sample's images (the SAM authors'
    # code) or over the other images only (their paper); see mage_fast/model/sam.py.
    sam_include_self: bool = True

    def __post_init__(self) -> None:
        if self.pool_k < 1:
            raise ValueError(f"model.aligner.pool_k must be >= 1, got {self.pool_k}")
        if not self.pos_init_std >= 0:
            raise ValueError(f"model.aligner.pos_init_std must be >= 0, got {self.pos_init_std}")
        self.num_tokens(1)  # an unknown type fails at config time, naming the key

    def num_tokens(self, grid: int) -> int:
        """Visual tokens per image for a g×g patch grid (the registry entry's count)."""
        return num_tokens(self, grid)


@dataclass
class LLMConfig:
    """Causal LLM: a local HF folder (`path`) or a small random-init Llama/Qwen2 config."""

    path: str | None = None
    arch: LLMArch = "llama"  # for random init
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    max_position_embeddings: int = 512
    # auto: flash_attention_2 if flash-attn is importable (and on CUDA), else sdpa_packed (sdpa that
    # attends a packed row one sample at a time: mage_fast.model.packed_attention).
    attn_implementation: AttnImpl = "auto"

    def __post_init__(self) -> None:
        check_choice("model.llm.arch", self.arch, LLMArch)
        check_choice("model.llm.attn_implementation", self.attn_implementation, AttnImpl)


@dataclass
class KernelConfig:
    """Which backend each fused op runs on. auto: on a CPU the native twin where it is the faster
    (patch_pool), else torch; on a GPU the backend `make gpu-check` validated for its class, else
    torch (mage_fast/ops/_backend.py, docs/ops.md)."""

    patch_pool: Backend = "auto"
    ian_projection: Backend = "auto"
    ce_mse: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("patch_pool", "ian_projection", "ce_mse"):
            check_choice(f"model.kernels.{name}", getattr(self, name), Backend)


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    # Tokenizer folder; empty means the LLM's folder (or, in training, <data.root>/tokenizer).
    tokenizer: str = ""
    mse_lambda: float = 1.0  # λ of the MSE alignment term
    # The conversation template the model is trained with (exports carry it to eval, bench, chat).
    template: str = "default"

    def __post_init__(self) -> None:
        if self.mse_lambda < 0:
            raise ValueError(f"model.mse_lambda must be >= 0, got {self.mse_lambda}")
        if self.template not in TEMPLATE_NAMES:
            raise ValueError(f"model.template must be one of {TEMPLATE_NAMES}, got {self.template!r}")
