"""`mage_fast::ce_mse`: fused linear cross-entropy (never the N x V logits) + masked MSE.

loss = ce + lam * mse, where
  ce  = sum over tokens with labels != ignore_index of CE(hidden_i weight^T, label_i) / denom,
        denom = num_items if given else the number of labelled tokens (ce = 0 if none);
  mse = mean over the (img_mask images x D) elements of (img - img_target)^2 (0 if none).

This module is the op's unit: the custom op with its fake and autograd, the low-level native
op's fake and autograd, and the backend table; the chunking planner is `ce_mse_plan`. The custom
op returns ce and mse (with the stored gradients below); `ce_mse` forms the loss from them, the
one place lam enters, and autograd carries lam to mse's incoming gradient. Every backend's forward
takes one `CeMseArgs` record and the planner's chunk rows.

Stored gradients. The forward computes the gradients with the loss, unscaled: per chunk of tokens
P = softmax - onehot (fp32; the target class as minus the sum of the other classes'
probabilities, so a confident prediction keeps its small gradient), 0 on ignored rows (a select:
NaN/Inf in a padding row never reaches a gradient), rounded once to the input dtype as the GEMM
operand; grad_hidden = P W and grad_weight = sum over chunks of P^T h, accumulated in fp32; the
image term stores (img - img_target) on masked rows. The scales 1/denom and 2/count leave as an
fp32 (2,) tensor, and the backward applies them, times the incoming gradients, in fp32 before
rounding to the input dtype. So fp16 gradients never pass through the underflow of a 1/16384
scale before a loss scale reaches them. grad_weight is stored in fp32 for fp16 inputs (an
unscaled sum over many tokens can pass fp16's 65504), in the weight's dtype otherwise.
When the graph is not retained, the backward scales the stored gradients in place and hands them
to autograd: the op holds one V x H buffer from forward to the weight's .grad, not two.

Chunks: every backend walks the tokens in chunks of the rows that `ce_mse_plan.plan_for` gives.

Backends: `torch` (this file), `triton` (kernels/ce_mse.py: fixed GEMM configs per shape, an
online log-sum-exp row kernel), `cpp` and `cuda` (one native function, csrc/ce_mse.cpp, on two
devices; the row kernel per device in csrc/cpu/ce_mse.cpp and csrc/cuda/ce_mse.cu). Sums run in
a fixed order (per-row partials summed by torch): deterministic, no fp32 atomics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from mage_fast.ops import _backend, _ext, _triton  # noqa: F401  (_ext: load mage_fast._C first)
from mage_fast.ops._checks import check_float, check_same_device, check_shape, check_tensor
from mage_fast.ops._gemm import mm_f32, widen_off_cuda
from mage_fast.ops._schema import record_schema
from mage_fast.ops.ce_mse_plan import plan_for

OP = "ce_mse"


class CeMseArgs(NamedTuple):
    """What every backend's forward receives, with the planner's chunk rows: the op's tensors and
    switches. `mage_fast::ce_mse`'s schema is made from it (then the backend name); the C++
    `ce_mse_fwd` takes its fields in its order (then the chunk rows)."""

    hidden: torch.Tensor  # (N, H)
    weight: torch.Tensor  # (V, H), hidden's dtype
    labels: torch.Tensor  # (N,) int64
    img: torch.Tensor  # (M, D)
    img_target: torch.Tensor  # (M, D), img's dtype
    img_mask: torch.Tensor  # (M,) bool
    ignore_index: int
    num_items: float | None  # the CE denominator; None: this call's labelled tokens
    need_hidden_grad: bool
    need_weight_grad: bool
    need_img_grad: bool


# (ce, mse) 0-dim fp32; stored gradients P W (N, H), P^T h (V, H), img - img_target (M, D), each
# empty (0,) when not needed; scales (2,) fp32 = (1 / denom, 2 / count).
_Out = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def grad_weight_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the stored (unscaled) grad_weight: fp32 for fp16 (range), else the input's."""
    return torch.float32 if dtype == torch.float16 else dtype


def _denom(valid: torch.Tensor, num_items: float | None) -> torch.Tensor:
    if num_items is None:
        return valid.sum().clamp(min=1).float()  # on the device: no host sync
    return torch.tensor(max(float(num_items), 1.0), device=valid.device)


def _addmm_f32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (fp32) += a @ b in place, fp32 accumulation, no temporary of acc's size."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
        return
    try:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    except (TypeError, RuntimeError):  # no addmm(out_dtype=) for these operands
        acc.addmm_(a.float(), b.float())


def _ce_chunks_torch(hidden, weight, labels, valid, rows, need_h, need_w):
    """-> (sum of the labelled tokens' CE (fp32 0-dim), P W (N, H) or empty, P^T h fp32 or None)."""
    dt = hidden.dtype
    ce_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    gh = torch.empty_like(hidden) if need_h else hidden.new_empty(0)
    gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    w_op = widen_off_cuda(weight)
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # ignored rows gather class 0
    for s in range(0, hidden.shape[0], rows):
        h, y, m = hidden[s : s + rows], safe[s : s + rows, None], valid[s : s + rows, None]
        logits = mm_f32(h, w_op.t())  # (rows, V) fp32
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        ce_sum += torch.where(m, lse - logits.gather(1, y), 0.0).sum()
        if not (need_h or need_w):
            continue
        p = logits.sub_(lse).exp_().scatter_(1, y, 0.0)
        p.scatter_(1, y, -p.sum(-1, keepdim=True))  # target: -(sum of the others), no cancellation
        p_op = p.masked_fill_(~m, 0.0).to(dt)
        if need_h:
            gh[s : s + rows] = mm_f32(p_op, w_op)
        if need_w:
            _addmm_f32_(gw, p_op.t(), widen_off_cuda(h.masked_fill(~m, 0.0)))
    return ce_sum, gh, gw


def _mse_torch(img, img_target, img_mask, need_i):
    """-> (mse fp32 0-dim, (img - img_target) on masked rows in img's dtype or empty, 2 / count)."""
    diff = torch.where(img_mask[:, None], img.float() - img_target.float(), 0.0)
    cnt = (img_mask.sum() * img.shape[1]).clamp(min=1).float()
    gi = diff.to(img.dtype) if need_i else img.new_empty(0)
    return (diff * diff).sum() / cnt, gi, 2.0 / cnt


def _fwd_torch(a: CeMseArgs, rows: int) -> _Out:
    valid = a.labels != a.ignore_index
    inv = 1.0 / _denom(valid, a.num_items)
    ce_sum, gh, gw = _ce_chunks_torch(a.hidden, a.weight, a.labels, valid, rows, a.need_hidden_grad, a.need_weight_grad)
    mse, gi, s_mse = _mse_torch(a.img, a.img_target, a.img_mask, a.need_img_grad)
    gw = gw.to(grad_weight_dtype(a.weight.dtype)) if a.need_weight_grad else a.weight.new_empty(0)
    return ce_sum * inv, mse, gh, gw, gi, torch.stack([inv, s_mse])


def _fwd_triton(a: CeMseArgs, rows: int) -> _Out:
    # The kernels index memory with the labels: an id outside [0, V) would read another row's
    # logit silently. No host sync on CUDA (the assert fires at a later launch); raises on CPU.
    V = a.weight.shape[0]
    valid = a.labels != a.ignore_index
    torch._assert_async(
        (valid.logical_not() | ((a.labels >= 0) & (a.labels < V))).all(),
        f"{OP}: a label is out of bounds: ids must be in [0, {V}) or ignore_index",
    )
    inv = 1.0 / _denom(valid, a.num_items)
    nh, nw, gw_dt = a.need_hidden_grad, a.need_weight_grad, grad_weight_dtype(a.weight.dtype)
    loss_rows, gh, gw = _triton.kernels.linear_ce_fwd(a.hidden, a.weight, a.labels, a.ignore_index, nh, nw, rows, gw_dt)
    mse, gi, s_mse = _triton.kernels.masked_mse_fwd(a.img, a.img_target, a.img_mask, a.need_img_grad)
    gh = gh if gh is not None else a.hidden.new_empty(0)
    gw = gw if gw is not None else a.weight.new_empty(0)
    gi = gi if gi is not None else a.img.new_empty(0)
    return loss_rows.sum() * inv, mse, gh, gw, gi, torch.stack([inv, s_mse])


def _fwd_native(a: CeMseArgs, rows: int) -> _Out:
    # ce_mse_fwd's schema is the record's fields, then the chunk rows (csrc/ops.cpp).
    return torch.ops.mage_fast.ce_mse_fwd(*a, rows)


# backend -> forward(args, rows) returning the op's 6 outputs; the backward is backend-independent
# scaling, so the rows carry forwards only. cpp is not picked by auto on CPU: there the torch
# backend's vectorised exp runs faster than the C++ twin's scalar loops (benchmarks/NOTES.md);
# the twin is the CI check of the C++ path.
TABLE = _backend.register(
    OP,
    (
        _backend.Backend("torch", _fwd_torch),
        _backend.Backend("triton", _fwd_triton, None, _triton.unavailable_reason, auto=_triton.auto_ok),
        *_ext.native_rows("ce_mse_fwd", _fwd_native, cpu_auto=False),
    ),
)


@torch.library.custom_op("mage_fast::ce_mse", mutates_args=(), schema=record_schema(CeMseArgs, _Out, backend=str))
def _ce_mse_op(*inputs: object) -> _Out:
    """CeMseArgs' fields, then the backend name -> (ce, mse) 0-dim fp32; the unscaled stored
    gradients P W (N, H) and P^T h (V, H) and img - img_target (M, D) (each empty (0,) when its
    flag is False; dtypes in the module docstring); scales (2,) fp32 = (1 / denom, 2 / count)."""
    a = _args(inputs)
    return TABLE[inputs[-1]].forward(a, plan_for(a.hidden, a.weight).rows)


def _args(inputs: tuple) -> CeMseArgs:
    """The record of an op's inputs: both ops take its fields first, then one more (the backend
    name of `mage_fast::ce_mse`, the chunk rows of `ce_mse_fwd`)."""
    return CeMseArgs(*inputs[: len(CeMseArgs._fields)])


def _fake(*inputs) -> _Out:
    a = _args(inputs)
    s = a.hidden.new_empty((), dtype=torch.float32)
    gh = torch.empty_like(a.hidden) if a.need_hidden_grad else a.hidden.new_empty(0)
    gw_dt = grad_weight_dtype(a.weight.dtype)
    gw = a.weight.new_empty(a.weight.shape, dtype=gw_dt) if a.need_weight_grad else a.weight.new_empty(0)
    gi = torch.empty_like(a.img) if a.need_img_grad else a.img.new_empty(0)
    return s, s.clone(), gh, gw, gi, s.new_empty((2,))


def _setup_context(ctx, inputs, output) -> None:
    # No incoming gradient for the stored outputs (nobody differentiates them): without this,
    # autograd materialises a zeros tensor of each, i.e. a V x H one for grad_weight per backward.
    # They are not marked non-differentiable: that would let the in-place backward scale a buffer
    # that a caller of the raw op still holds (test_retain_graph_and_in_place_backward).
    ctx.set_materialize_grads(False)
    a = _args(inputs)
    ctx.needs = (a.need_hidden_grad, a.need_weight_grad, a.need_img_grad)
    ctx.dtypes = (a.hidden.dtype, a.weight.dtype, a.img.dtype)
    ctx.save_for_backward(*output[2:])


_OWN_REFS = 3


def _in_place_ok(*ts: torch.Tensor) -> bool:
    """Whether the backward may scale the stored gradients in place and hand them on: eager, the
    graph freed after this backward (no retain_graph, no create_graph), no tracing mode."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return False
    if any(type(t) is not torch.Tensor for t in ts):
        return False
    # Nobody else may see the buffers: a caller of the raw op that still holds its outputs would
    # see them change. Holders of a stored buffer here: the saved variable, the unpacked tensor
    # and the storage object of this query (3); one more is someone else's.
    if any(t.numel() and torch._C._storage_Use_Count(t.untyped_storage()._cdata) > _OWN_REFS for t in ts):
        return False
    try:
        return not torch._C._autograd._get_current_graph_task_keep_graph()
    except RuntimeError:  # not inside an engine's backward
        return False


def _scaled(g: torch.Tensor, s: torch.Tensor, dtype: torch.dtype, in_place: bool) -> torch.Tensor:
    """g * s computed in fp32 (s: fp32 0-dim) and rounded once to `dtype`."""
    if in_place and g.dtype == dtype:
        return g.mul_(s)
    if g.dtype == dtype:
        return g * s
    return (g.float() * s).to(dtype)


def _backward(ctx, d_ce, d_mse, *_):
    gh, gw, gi, scales = ctx.saved_tensors
    need_h, need_w, need_i = ctx.needs
    zero = torch.zeros((), dtype=torch.float32, device=scales.device)
    s_ce = (zero if d_ce is None else d_ce) * scales[0]  # d out / d ce, times 1 / denom
    s_mse = (zero if d_mse is None else d_mse) * scales[1]
    in_place = _in_place_ok(gh, gw, gi)
    grads = {
        "hidden": _scaled(gh, s_ce, ctx.dtypes[0], in_place) if need_h else None,
        "weight": _scaled(gw, s_ce, ctx.dtypes[1], in_place) if need_w else None,
        "img": _scaled(gi, s_mse, ctx.dtypes[2], in_place) if need_i else None,
    }
    return (*(grads.get(name) for name in CeMseArgs._fields), None)  # None: backend / chunk rows


_ce_mse_op.register_fake(_fake)
_ce_mse_op.register_autograd(_backward, setup_context=_setup_context)
if _ext.HAS_C and hasattr(torch.ops.mage_fast, "ce_mse_fwd"):  # csrc/ce_mse.cpp: the same fake and autograd
    torch.library.register_fake("mage_fast::ce_mse_fwd", _fake)
    torch.library.register_autograd("mage_fast::ce_mse_fwd", _backward, setup_context=_setup_context)


def _validate(hidden, weight, labels, img, img_target, img_mask) -> torch.Tensor:
    """Shape/dtype/device checks; returns labels as int64."""
    for name, t in (("hidden", hidden), ("weight", weight), ("img", img), ("img_target", img_target)):
        check_tensor(OP, name, t, dim=2)
    check_tensor(OP, "labels", labels, dim=1)
    check_tensor(OP, "img_mask", img_mask, dim=1)
    check_float(OP, "hidden", hidden)
    check_float(OP, "weight", weight, dtype=hidden.dtype)
    check_float(OP, "img", img)
    check_float(OP, "img_target", img_target, dtype=img.dtype)
    tensors = dict(hidden=hidden, weight=weight, labels=labels, img=img, img_target=img_target, img_mask=img_mask)
    check_same_device(OP, **tensors)
    N, H = hidden.shape
    if weight.shape[1] != H:
        raise ValueError(f"{OP}: weight must be (V, {H}) to match hidden (N, {H}), got {tuple(weight.shape)}")
    check_shape(OP, "labels", labels, (N,))
    check_shape(OP, "img_target", img_target, tuple(img.shape))
    check_shape(OP, "img_mask", img_mask, (img.shape[0],))
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{OP}: labels must be int64 or int32, got {labels.dtype}")
    if img_mask.dtype != torch.bool:
        raise ValueError(f"{OP}: img_mask must be bool, got {img_mask.dtype}")
    if img_target.requires_grad:
        raise ValueError(f"{OP}: img_target is a fixed target and must not require grad (detach it)")
    return labels.long()


def ce_mse(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    img: torch.Tensor,
    img_target: torch.Tensor,
    img_mask: torch.Tensor,
    lam: float,
    ignore_index: int = -100,
    num_items: int | float | torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused lm_head + token cross-entropy + image MSE: (loss, ce, mse), 0-dim fp32 tensors.

    Args:
        hidden: (N, H) final hidden states, already aligned with labels (the caller shifts).
        weight: (V, H) lm_head weight (the gathered one under ZeRO-3), hidden's dtype.
        labels: (N,) int64/int32 target ids, `ignore_index` where no loss is taken.
        img: (M, D) predicted per-image vectors (M may be 0).
        img_target: (M, D) targets, img's dtype, must not require grad.
        img_mask: (M,) bool, which images have a target.
        lam: weight of the MSE term.
        num_items: labelled tokens of the whole accumulated batch (exact gradient accumulation);
            default: this call's labelled tokens. A tensor is read with `.item()` (one host sync).
        backend: "auto" | "torch" | "cpp" | "triton" | "cuda".

    Returns:
        (loss, ce, mse) with loss = ce + lam * mse; any of them may be backpropagated.
    """
    labels = _validate(hidden, weight, labels, img, img_target, img_mask)
    if isinstance(num_items, torch.Tensor):
        num_items = num_items.item()
    if num_items is not None:
        if num_items < 0:
            raise ValueError(f"{OP}: num_items must be >= 0, got {num_items}")
        num_items = float(num_items)
    b = _backend.resolve(OP, backend, hidden.device)
    g = torch.is_grad_enabled()
    needs = (g and hidden.requires_grad, g and weight.requires_grad, g and img.requires_grad)
    a = CeMseArgs(hidden, weight, labels, img, img_target, img_mask, int(ignore_index), num_items, *needs)
    ce, mse = _ce_mse_op(*a, b)[:2]
    return ce + float(lam) * mse, ce, mse  # the one place lam enters: autograd carries it to d mse
