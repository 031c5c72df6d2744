"""One optimizer step, as small functions that `train()` and `benchmarks/bench_step.py` both call.

- `step_normalisers`: the step's labelled tokens and captioned images over every micro-batch and
  rank (one all-reduce), so accumulation is exact: each micro-batch's CE is divided by the step's
  labelled tokens and its MSE weighted by its share of the step's captioned images (a rank or
  micro-batch without captions does not dilute λ).
- `forward_backward_step`: one micro-batch; the op's own `ce + λ·mse` is what is backpropagated.
- `train_step`: the micro-batches, one all-reduce for the step's decision and its logs, then the
  update, or a skip on every rank when any rank saw a non-finite loss or gradient norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mage_fast.labels import loss_tokens
from mage_fast.train.dist import all_reduce_vec
from mage_fast.train.engine import grad_sumsq, local_grads, skip_step

Batch = dict  # a Collator batch: tensors (B, L) / (N, 3, S, S) ..., plus "ids"


@dataclass
class StepResult:
    """What one step did, summed over ranks (every rank holds the same values)."""

    loss: float  # ce + λ·mse of the step
    ce: float
    mse: float
    grad_norm: float  # L2 norm of the reduced gradients (nan when non-finite)
    nonfinite: str | None  # "loss" or "gradient norm" when the step was skipped, else None
    tokens: float  # attended positions of the step (throughput)
    images_per_rank: list[int]
    stop: bool  # some rank asked the run to stop after this step (a signal)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def captioned(batch: Batch) -> int:
    """Images of the batch with a caption (the ones the MSE term averages over)."""
    return int(batch["caption_mask"].any(1).sum())


def step_normalisers(micro: list[Batch]) -> tuple[int, list[float]]:
    """(labelled tokens of the step on all ranks, each micro-batch's share of its captioned images)."""
    caps = [captioned(b) for b in micro]
    num_items, num_caps = all_reduce_vec([sum(loss_tokens(b["labels"]) for b in micro), sum(caps)])
    return max(int(num_items), 1), [c / max(num_caps, 1.0) for c in caps]


def forward_backward_step(
    engine, batch: Batch, num_items: int, mse_share: float, world: int, boundary: bool, nan_loss: bool = False
) -> tuple[float, float, float]:
    """Forward and backward of one micro-batch -> its (loss, ce, mse) parts of the step's values.

    The loss is already this rank's part of the mean over all ranks; DeepSpeed averages the
    gradients over ranks, so ×world undoes that, and `scale_wrt_gas=False` keeps it from
    dividing by the accumulation steps a second time. `nan_loss` is the fault injection of tests.
    """
    engine.set_gradient_accumulation_boundary(boundary)
    out = engine(**to_device(batch, engine.device), num_items=num_items, mse_share=mse_share)
    loss, ce = out["loss"], out["ce"]
    if nan_loss:
        loss, ce = loss * float("nan"), ce * float("nan")
    engine.backward(loss * world, scale_wrt_gas=False)
    return float(loss.detach()), float(ce.detach()), float(out["mse"].detach())


def _reduce(
    engine, micro: list[Batch], parts: list[tuple[float, float, float]], rank: int, world: int, stop: bool
) -> list[float]:
    """One collective for the step's decision and its logs, so every rank decides the same."""
    bad = not all(math.isfinite(x) for p in parts for x in p)
    images = [0.0] * world
    images[rank] = float(sum(int(b["image_counts"].sum()) for b in micro))
    tokens = float(sum(int(b["attention_mask"].sum()) for b in micro))
    sums = [sum(p[i] for p in parts) for i in range(3)]
    return all_reduce_vec([grad_sumsq(engine), float(bad), *sums, tokens, float(stop), *images])


def train_step(
    engine,
    micro: list[Batch],
    rank: int,
    world: int,
    fault: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> StepResult:
    """Forward/backward over the step's micro-batches, then the update or a skip on every rank.

    fault: "loss" (a NaN loss) or "grad" (an Inf in this rank's reduced gradients), for tests.
    stop: whether this rank was asked to end the run, read at the step's all-reduce (a signal
    during the forward still stops after this step); the result says if any rank was asked.
    """
    num_items, shares = step_normalisers(micro)
    parts = [
        forward_backward_step(engine, b, num_items, shares[i], world, i == len(micro) - 1, fault == "loss")
        for i, b in enumerate(micro)
    ]
    if fault == "grad":
        with torch.no_grad():
            local_grads(engine)[0].view(-1)[0] = float("inf")
    red = _reduce(engine, micro, parts, rank, world, stop is not None and stop())
    grad_norm = math.sqrt(red[0]) if red[0] >= 0 else math.nan
    nonfinite = "loss" if red[1] > 0 else ("gradient norm" if not math.isfinite(grad_norm) else None)
    if nonfinite:
        skip_step(engine)
    else:
        engine.step()
    return StepResult(
        loss=red[2],
        ce=red[3],
        mse=red[4],
        grad_norm=grad_norm,
        nonfinite=nonfinite,
        tokens=red[5],
        images_per_rank=[int(x) for x in red[7:]],
        stop=red[6] > 0,
    )
