"""`mage_fast::ce_mse`: fused linear cross-entropy (never the N x V logits) + masked MSE.

loss = ce + lam * mse, where
  ce  = sum over tokens with labels != ignore_index of CE(hidden_i weight^T, label_i) / denom,
        denom = num_items if given else the number of labelled tokens (ce = 0 if none);
  mse = mean over the (img_mask images x D) elements of (img - img_target)^2 (0 if none).

Torch backend (Liger-style): the forward walks the tokens in chunks; per chunk it builds the
logits in fp32, their log-sum-exp, the CE, and, when a gradient is needed, (softmax - onehot) in
fp32, from which it computes grad_hidden (per chunk) and grad_weight (accumulated in fp32 over
chunks, rounded once to weight.dtype). The backward only scales these stored gradients by the
incoming grads of loss/ce/mse, so any combination of outputs can be backpropagated. The stored
gradients are kept in their input's dtype (for bf16, half the memory of fp32 held from forward to
backward); scaling them rounds once more unless the scale is a power of two (loss.backward(),
1/gas with gas a power of two), a last-ulp effect within the DESIGN.md low-precision rule.

Triton backend (kernels/ce_mse.py): the same chunks and stored gradients; per chunk a GEMM to
fp32 logits, a row kernel with an online log-sum-exp over vocabulary tiles that writes
(softmax - onehot) / denom (the one-hot subtracted in fp32: the precision trap of confident
predictions in bf16), then GEMMs for grad_hidden and, accumulated in fp32, grad_weight; the MSE and
its gradient in a row kernel.

Chunk rule: a chunk holds `rows` tokens so that its fp32 logits plus their same-size softmax
buffer, 2 * rows * V * 4 bytes, stay within `CHUNK_BYTES` (64 MiB: 1.5k rows at V = 32k, 128 at
V = 128k); at least 1 row, at most N.
"""

from __future__ import annotations

import torch

from mage_fast.ops import _backend, _ext, _triton  # noqa: F401  (_ext: load mage_fast._C first)
from mage_fast.ops._checks import check_float, check_same_device, check_shape, check_tensor
from mage_fast.ops._gemm import mm_f32, widen_off_cuda

OP = "ce_mse"
CHUNK_BYTES: int = 64 * 2**20


def chunk_rows(n: int, v: int, budget: int | None = None) -> int:
    """Tokens per chunk so that 2 fp32 (rows, v) buffers fit `budget` bytes (default CHUNK_BYTES)."""
    budget = CHUNK_BYTES if budget is None else budget
    return max(1, min(n, budget // (2 * 4 * max(v, 1))))


def _fwd_torch(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
               need_h, need_w, need_i):  # fmt: skip
    N, V = hidden.shape[0], weight.shape[0]
    dt = hidden.dtype
    valid = labels != ignore_index
    if num_items is None:
        denom = valid.sum().clamp(min=1).float()  # on device: no host sync
    else:
        denom = torch.tensor(max(float(num_items), 1.0), device=hidden.device)
    inv = 1.0 / denom
    ce_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    gh = torch.empty_like(hidden) if need_h else hidden.new_empty(0)
    gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    w_op = widen_off_cuda(weight)
    safe = torch.where(valid, labels, torch.zeros_like(labels))  # ignored rows gather class 0
    rows = chunk_rows(N, V)
    for s in range(0, N, rows):
        e = min(N, s + rows)
        h, y, m = hidden[s:e], safe[s:e, None], valid[s:e].float()
        logits = mm_f32(h, w_op.t())  # (rows, V) fp32
        lse = torch.logsumexp(logits, dim=-1)
        ce_sum += ((lse - logits.gather(1, y).squeeze(1)) * m).sum()
        if need_h or need_w:
            # d ce / d logits = (softmax - onehot) / denom on labelled rows, 0 on ignored ones.
            p = logits.sub_(lse[:, None]).exp_()
            p.scatter_add_(1, y, -m[:, None])
            p.mul_((m * inv)[:, None])
            p_op = p.to(dt)
            if need_h:
                gh[s:e] = mm_f32(p_op, w_op).to(dt)
            if need_w:
                gw += mm_f32(p_op.t(), h)
    ce = ce_sum * inv
    mk = img_mask.float()[:, None]
    diff = (img.float() - img_target.float()) * mk  # (M, D), unmasked rows zeroed
    cnt = (mk.sum() * img.shape[1]).clamp(min=1)
    mse = (diff * diff).sum() / cnt
    gi = (diff * (2.0 / cnt)).to(img.dtype) if need_i else img.new_empty(0)
    loss = ce + lam * mse
    gw = gw.to(weight.dtype) if need_w else weight.new_empty(0)
    return loss, ce, mse, gh, gw, gi


def _fwd_triton(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
                need_h, need_w, need_i):  # fmt: skip
    # The kernels index memory with the labels: an id outside [0, V) would read another row's
    # logit silently. No host sync on CUDA (the assert fires at a later launch); raises on CPU.
    V = weight.shape[0]
    ok = ((labels >= 0) & (labels < V)) | (labels == ignore_index)
    torch._assert_async(ok.all(), f"{OP}: a label is out of bounds: ids must be in [0, {V}) or ignore_index")
    loss, ce, mse, gh, gw, gi = _triton.kernels.ce_mse_fwd(
        hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
        need_h, need_w, need_i, chunk_rows(hidden.shape[0], V),
    )  # fmt: skip
    gh = gh if gh is not None else hidden.new_empty(0)
    gw = gw if gw is not None else weight.new_empty(0)
    gi = gi if gi is not None else img.new_empty(0)
    return loss, ce, mse, gh, gw, gi


def _fwd_kernel(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
                need_h, need_w, need_i):  # fmt: skip
    # C++ kernels (csrc/cpu/ce_mse.cpp as "cpp", csrc/cuda/ce_mse.cu as "cuda"), same chunk rule.
    return torch.ops.mage_fast.ce_mse_fwd(
        hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
        need_h, need_w, need_i, chunk_rows(hidden.shape[0], weight.shape[0]),
    )  # fmt: skip


# The backward is backend-independent scaling, so the rows carry forwards only. The Triton forward
# (kernels/ce_mse.py) and the C++/CUDA ones follow the torch one: same chunks (fp32 logits plus a
# gradient buffer fit the same budget), same stored gradients.
# auto=False for cpp: at N=256, H=256, V=8192 (fwd+bwd, 2 threads) the C++ twin's scalar exp loops
# took ~1.5x the torch backend's (vectorised) time; the twin is the CI check of the C++ path.
TABLE = _backend.register(
    OP,
    (
        _backend.Backend("torch", _fwd_torch),
        _backend.Backend("triton", _fwd_triton, None, _triton.unavailable_reason, auto=_triton.auto_ok),
        *_ext.native_rows("ce_mse_fwd", _fwd_kernel, cpu_auto=False),
    ),
)

_Out = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("mage_fast::ce_mse", mutates_args=())
def _ce_mse_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    img: torch.Tensor,
    img_target: torch.Tensor,
    img_mask: torch.Tensor,
    lam: float,
    ignore_index: int,
    num_items: float | None,
    need_hidden_grad: bool,
    need_weight_grad: bool,
    need_img_grad: bool,
    backend: str,
) -> _Out:
    """-> (loss, ce, mse) 0-dim fp32, then d ce/d hidden (N, H), d ce/d weight (V, H),
    d mse/d img (M, D) in their input's dtype, each empty (0,) when its flag is False."""
    return TABLE[backend].forward(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index,
                           num_items, need_hidden_grad, need_weight_grad, need_img_grad)  # fmt: skip


@_ce_mse_op.register_fake
def _(hidden, weight, labels, img, img_target, img_mask, lam, ignore_index, num_items,
      need_hidden_grad, need_weight_grad, need_img_grad, backend) -> _Out:  # fmt: skip
    s = hidden.new_empty((), dtype=torch.float32)
    gh = torch.empty_like(hidden) if need_hidden_grad else hidden.new_empty(0)
    gw = torch.empty_like(weight) if need_weight_grad else weight.new_empty(0)
    gi = torch.empty_like(img) if need_img_grad else img.new_empty(0)
    return s, s.clone(), s.clone(), gh, gw, gi


def _setup_context(ctx, inputs, output) -> None:
    ctx.lam = inputs[6]
    ctx.flags = inputs[9:12]
    _, _, _, gh, gw, gi = output
    ctx.save_for_backward(gh, gw, gi)


def _backward(ctx, d_loss, d_ce, d_mse, *_):
    gh, gw, gi = ctx.saved_tensors
    need_h, need_w, need_i = ctx.flags
    zero = torch.zeros((), dtype=torch.float32, device=gh.device)
    d_loss = zero if d_loss is None else d_loss
    s_ce = d_loss + (zero if d_ce is None else d_ce)  # d out / d ce
    s_mse = d_loss * ctx.lam + (zero if d_mse is None else d_mse)  # d out / d mse
    dh = gh * s_ce if need_h else None
    dw = gw * s_ce if need_w else None
    di = gi * s_mse if need_i else None
    return dh, dw, None, di, None, None, None, None, None, None, None, None, None


_ce_mse_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(hidden, weight, labels, img, img_target, img_mask) -> torch.Tensor:
    """Shape/dtype/device checks; returns labels as int64."""
    check_tensor(OP, "hidden", hidden, dim=2)
    check_tensor(OP, "weight", weight, dim=2)
    check_tensor(OP, "labels", labels, dim=1)
    check_tensor(OP, "img", img, dim=2)
    check_tensor(OP, "img_target", img_target, dim=2)
    check_tensor(OP, "img_mask", img_mask, dim=1)
    check_float(OP, "hidden", hidden)
    check_float(OP, "weight", weight, dtype=hidden.dtype)
    check_float(OP, "img", img)
    check_float(OP, "img_target", img_target, dtype=img.dtype)
    check_same_device(OP, hidden=hidden, weight=weight, labels=labels, img=img, img_target=img_target,
                      img_mask=img_mask)  # fmt: skip
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
    grad = torch.is_grad_enabled()
    out = _ce_mse_op(hidden, weight, labels, img, img_target, img_mask, float(lam), int(ignore_index),
                     num_items, grad and hidden.requires_grad, grad and weight.requires_grad,
                     grad and img.requires_grad, b)  # fmt: skip
    return out[0], out[1], out[2]
