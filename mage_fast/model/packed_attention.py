"""`sdpa_packed`: HF's sdpa attention, with packed rows attended one sample at a time.

A packed row (several samples, `position_ids` restarting at 0 per sample) needs attention inside
each sample only. HF's own sdpa path builds a dense (R, 1, L, L) block-diagonal mask for it and
attends over all L² pairs, most of them masked; here each sample's span runs its own causal sdpa,
so a row of samples n_1..n_k costs sum n_i² instead of L². Any batch that is not packed (padded
rows, generation with a cache, one sample per row) goes to HF's sdpa function unchanged, with the
masks HF builds for sdpa: results equal `sdpa`'s there bit for bit.

`build_llm` uses it where `sdpa` would run; flash_attention_2 has its own varlen path for packed
position ids, and eager / flex keep HF's mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask

NAME = "sdpa_packed"


def segments(position_ids: torch.Tensor) -> list[list[tuple[int, int]]] | None:
    """position_ids (R, L) -> per row the [start, end) spans of its samples (a restart where the
    position does not follow the previous one, as HF reads packed rows), or None when no row holds
    more than one span."""
    seq = find_packed_sequence_indices(position_ids)
    if seq is None:
        return None
    out = []
    for row in seq.tolist():
        starts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1]]
        out.append(list(zip(starts, starts[1:] + [len(row)])))
    return out


def sdpa_packed_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (R, H, L, Dh), key / value (R, H_kv, L, Dh) -> (R, L, H, Dh), as HF's sdpa function."""
    position_ids = kwargs.get("position_ids")
    spans = None
    if position_ids is not None and query.shape[2] > 1 and key.shape[2] == query.shape[2]:
        spans = segments(position_ids.expand(query.shape[0], -1))
    if spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for r, row in enumerate(spans):
        parts = [
            F.scaled_dot_product_attention(
                query[r : r + 1, :, a:b],
                key[r : r + 1, :, a:b],
                value[r : r + 1, :, a:b],
                dropout_p=dropout,
                is_causal=True,
                scale=scaling,
                enable_gqa=gqa,
            )
            for a, b in row
        ]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_packed_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
