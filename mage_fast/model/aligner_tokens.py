"""Visual tokens per image of each aligner type, below the config and the aligners: the config
validates `model.aligner.type` here, and :data:`mage_fast.model.aligner.ALIGNERS` (each type's
builder) is checked against this table when it loads."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mage_fast.model.config import AlignerConfig


def pooled_tokens(cfg: AlignerConfig, grid: int) -> int:
    """⌈g/k⌉² tokens: one per pooled k×k patch cell."""
    return math.ceil(grid / cfg.pool_k) ** 2


def patch_tokens(cfg: AlignerConfig, grid: int) -> int:
    """g·g tokens: one per patch."""
    return grid * grid


TOKEN_COUNTS: dict[str, Callable[[AlignerConfig, int], int]] = {
    "ian": pooled_tokens,
    "pool_mlp": pooled_tokens,
    "mlp2x_gelu": patch_tokens,
    "linear": patch_tokens,
    "sam": pooled_tokens,
}


def num_tokens(cfg: AlignerConfig, grid: int) -> int:
    """Visual tokens per image for a g×g patch grid; ValueError naming the key for an unknown type."""
    if cfg.type not in TOKEN_COUNTS:
        raise ValueError(f"model.aligner.type must be one of {tuple(TOKEN_COUNTS)}, got {cfg.type!r}")
    return TOKEN_COUNTS[cfg.type](cfg, grid)
