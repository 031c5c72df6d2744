"""The label convention shared by the data (which writes labels) and the model (which reads them).

`labels` (B, L) hold, at each position, the token expected there (a copy of input_ids), or
`IGNORE_INDEX` where no loss applies (prompt, image placeholders, padding), as in LLaVA and HF:
position t's hidden state predicts labels[:, t + 1]. Every place that needs that shift calls
`next_token_targets`.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels (B, L) -> (targets (B, L-1), mask (B, L-1) bool): hidden[:, :-1][mask] predicts
    targets[mask]; the mask marks the positions that carry a next-token loss."""
    targets = labels[:, 1:]
    return targets, targets != IGNORE_INDEX


def loss_tokens(labels: torch.Tensor) -> int:
    """How many positions of `labels` (B, L) carry a next-token loss."""
    return int(next_token_targets(labels)[1].sum())
