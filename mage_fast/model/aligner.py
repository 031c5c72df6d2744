"""Aligners from one registry: ian (MAGE), mlp2x_gelu (LLaVA-1.5), linear, pool_mlp, sam.

All map vision features V (B_img, g·g, C) to visual tokens Z (B_img, T, D) in the LLM's
embedding space; T = `cfg.num_tokens(g)`. A new aligner is one `ALIGNERS` entry (its builder and
its token count) and the same count in `mage_fast.model.aligner_tokens.TOKEN_COUNTS`, which the
config validates `model.aligner.type` against (checked equal at import);
`model.aligner.type` names the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from mage_fast.model.aligner_tokens import TOKEN_COUNTS, patch_tokens, pooled_tokens
from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.ian import IANAligner, PoolMLPAligner
from mage_fast.model.layers import MLP
from mage_fast.model.sam import SAMAligner

Builder = Callable[[AlignerConfig, int, int, int, KernelConfig], nn.Module]


class Aligner(NamedTuple):
    """A registry entry: build(cfg, in_dim, out_dim, grid, kernels), and T for a g×g grid."""

    build: Builder
    num_tokens: Callable[[AlignerConfig, int], int]


ALIGNERS: dict[str, Aligner] = {
    "ian": Aligner(IANAligner, pooled_tokens),
    "pool_mlp": Aligner(PoolMLPAligner, pooled_tokens),
    "mlp2x_gelu": Aligner(lambda cfg, i, o, g, k: MLP(i, o, o), patch_tokens),
    "linear": Aligner(lambda cfg, i, o, g, k: nn.Linear(i, o), patch_tokens),
    "sam": Aligner(SAMAligner, pooled_tokens),
}
# The config validates `type` against the token counts alone (it cannot import the builders).
if {k: a.num_tokens for k, a in ALIGNERS.items()} != TOKEN_COUNTS:
    raise ImportError("mage_fast.model.aligner_tokens.TOKEN_COUNTS must list each ALIGNERS entry with its token count")


def _entry(cfg: AlignerConfig) -> Aligner:
    if cfg.type not in ALIGNERS:
        raise ValueError(f"model.aligner.type must be one of {tuple(ALIGNERS)}, got {cfg.type!r}")
    return ALIGNERS[cfg.type]


def build_aligner(cfg: AlignerConfig, in_dim: int, out_dim: int, grid: int, kernels: KernelConfig) -> nn.Module:
    """The one factory: `model.aligner.type` switches the ablation."""
    return _entry(cfg).build(cfg, in_dim, out_dim, grid, kernels)
