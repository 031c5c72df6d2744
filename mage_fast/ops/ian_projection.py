"""`mage_fast::ian_projection`: y = LayerNorm(GELU_erf(x w1^T + b1) w2^T + b2), the IAN aligner's
Vector Alignment Block.

Shapes: x (N, C), w1 (D, C), b1 (D,), w2 (D, D), b2 (D,), ln_w (D,), ln_b (D,) -> y (N, D). The
public wrapper flattens leading dims of x (..., C) and restores them.

The torch backend is the template of the kernel backends:

* forward: GEMM1 with fp32 output, + b1 and exact GELU in fp32 (GEMM1's epilogue in a kernel);
  GELU output rounded to x.dtype as GEMM2's operand; GEMM2 fp32 output, + b2 and LayerNorm in
  fp32 (GEMM2's epilogue); y rounded to x.dtype.
* saved for backward (only when a grad is needed): z1 = x w1^T + b1 (N, D, x.dtype), the
  normalised xhat (N, D, x.dtype) and rstd (N, fp32). GELU(z1) is *recomputed* from z1 in the
  backward (one elementwise pass) instead of stored, so the op holds 2 N x D activations beside x.
  Storing xhat instead of z2 means the LayerNorm backward needs no mean and no extra GEMM.
* backward (hand-written): LayerNorm backward in fp32 with dγ/dβ reduced in fp32; GELU'(z) =
  Φ(z) + z φ(z) exactly; GEMM operands in x.dtype, outputs fp32, grads returned in their input's
  dtype. GEMMs whose result nobody needs are skipped (ctx.needs_input_grad).

The triton backend (kernels/ian_projection.py) has the same rounding points and saved tensors: a
GEMM with a bias + GELU epilogue, a GEMM to fp32, a bias + LayerNorm row kernel; backward: a
LayerNorm row kernel (fp32 dγ/dβ/db2 partials), GELU recomputed in the dw2 GEMM's operand load,
GELU' and db1 in the dz1 GEMM's epilogue. Its backward runs as the custom op
`mage_fast::ian_projection_backward`, so torch.compile traces a fake instead of a launcher.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mage_fast.ops import _backend, _ext, _triton  # noqa: F401  (_ext: load mage_fast._C first)
from mage_fast.ops._checks import check_float, check_same_device, check_shape, check_tensor
from mage_fast.ops._gemm import mm_f32
from mage_fast.ops._schema import record_schema

OP = "ian_projection"
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def gelu_grad(z: torch.Tensor) -> torch.Tensor:
    """d/dz of exact GELU z*Φ(z): Φ(z) + z*φ(z), fp32."""
    return 0.5 * (1.0 + torch.erf(z * math.sqrt(0.5))) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _fwd_torch(x, w1, b1, w2, b2, ln_w, ln_b, eps: float, save: bool):
    dt = x.dtype
    z1 = mm_f32(x, w1.t()) + b1.float()  # (N, D) fp32
    z2 = mm_f32(F.gelu(z1).to(dt), w2.t()) + b2.float()
    var, mean = torch.var_mean(z2, dim=-1, unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    xhat = (z2 - mean) * rstd
    y = (xhat * ln_w.float() + ln_b.float()).to(dt)
    if not save:  # distinct empties: outputs of a custom op must not alias each other
        return y, x.new_empty(0), x.new_empty(0), x.new_empty(0, dtype=torch.float32)
    return y, z1.to(dt), xhat.to(dt), rstd.squeeze(-1)


def _bwd_torch(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs: tuple[bool, ...]):
    """Grads of (x, w1, b1, w2, b2, ln_w, ln_b); None where `needs` is False."""
    nx, nw1, nb1, nw2, nb2, nlw, nlb = needs
    dt = x.dtype
    dy = dy.float()
    xh = xhat.float()
    dln_w = (dy * xh).sum(0).to(ln_w.dtype) if nlw else None
    dln_b = dy.sum(0).to(ln_w.dtype) if nlb else None
    dx = dw1 = db1 = dw2 = db2 = None
    if not (nx or nw1 or nb1 or nw2 or nb2):
        return dx, dw1, db1, dw2, db2, dln_w, dln_b
    # LayerNorm: dz2 = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), all fp32.
    dxh = dy * ln_w.float()
    dz2 = rstd[:, None] * (dxh - dxh.mean(-1, keepdim=True) - xh * (dxh * xh).mean(-1, keepdim=True))
    if nb2:
        db2 = dz2.sum(0).to(w2.dtype)
    z1f = z1.float()
    dz2_op = dz2.to(dt)
    if nw2:
        dw2 = mm_f32(dz2_op.t(), F.gelu(z1f).to(dt)).to(w2.dtype)  # recomputed GELU
    if nx or nw1 or nb1:
        dz1 = mm_f32(dz2_op, w2) * gelu_grad(z1f)
        if nb1:
            db1 = dz1.sum(0).to(w1.dtype)
        dz1_op = dz1.to(dt)
        if nw1:
            dw1 = mm_f32(dz1_op.t(), x).to(w1.dtype)
        if nx:
            dx = mm_f32(dz1_op, w1).to(dt)
    return dx, dw1, db1, dw2, db2, dln_w, dln_b


def _fwd_triton(x, w1, b1, w2, b2, ln_w, ln_b, eps: float, save: bool):
    z2, z1 = _triton.kernels.gelu_mlp_fwd(x, w1, b1, w2, save)
    y, xhat, rstd = _triton.kernels.bias_layernorm_fwd(z2, b2, ln_w, ln_b, eps, save, x.dtype)
    if not save:
        return y, x.new_empty(0), x.new_empty(0), x.new_empty(0, dtype=torch.float32)
    return y, z1, xhat, rstd


def _bwd_triton(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs: tuple[bool, ...]):
    nx, nw1, nb1, nw2, nb2, nlw, nlb = needs
    need_dz2 = nx or nw1 or nb1 or nw2 or nb2
    sums, dz2, dw2 = _triton.kernels.linear_layernorm_bwd(dy, xhat, rstd, ln_w, z1, need_dz2, nw2)
    dx, dw1, db1 = _triton.kernels.linear_gelu_bwd(dz2, x, w1, w2, z1, (nx, nw1, nb1))
    # copies, so that no two grads share storage
    dln_w = sums[0].to(ln_w.dtype, copy=True) if nlw else None
    dln_b = sums[1].to(ln_w.dtype, copy=True) if nlb else None
    db2 = sums[2].to(w2.dtype, copy=True) if nb2 else None
    return dx, dw1, db1, dw2, db2, dln_w, dln_b


def _fwd_native(x, w1, b1, w2, b2, ln_w, ln_b, eps: float, save: bool):
    # csrc/cpu/ian_projection.cpp or csrc/cuda/ian_projection.cu: the dispatcher picks x's device.
    return torch.ops.mage_fast.ian_projection_fwd(x, w1, b1, w2, b2, ln_w, ln_b, eps, save)


def _bwd_native(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs: tuple[bool, ...]):
    out = torch.ops.mage_fast.ian_projection_bwd(dy.contiguous(), x, w1, w2, ln_w, z1, xhat, rstd, list(needs))
    return tuple(g if n else None for g, n in zip(out, needs))


# The Triton kernels (kernels/ian_projection.py) and the native ones follow the torch template:
# same saved tensors, same rounding points.
# cpp is not picked by auto on CPU: its lead over the torch backend there is too small and noisy to
# make it every CPU run's default (benchmarks/NOTES.md); it is the CI check of the C++ path and
# selectable by name.
TABLE = _backend.register(
    OP,
    (
        _backend.Backend("torch", _fwd_torch, _bwd_torch),
        _backend.Backend(
            "triton", _fwd_triton, _bwd_triton, _triton.unavailable_reason, _triton.auto_ok, opaque_backward=True
        ),
        *_ext.native_rows("ian_projection_fwd", _fwd_native, _bwd_native, cpu_auto=False),
    ),
)


class IanArgs(NamedTuple):
    """The forward's inputs, in the order every backend's forward takes them. The schema of
    `mage_fast::ian_projection` is made from it (then the backend name); the C++
    `ian_projection_fwd` takes its fields in its order."""

    x: torch.Tensor  # (N, C)
    w1: torch.Tensor  # (D, C)
    b1: torch.Tensor  # (D,)
    w2: torch.Tensor  # (D, D)
    b2: torch.Tensor  # (D,)
    ln_w: torch.Tensor  # (D,) LayerNorm weight
    ln_b: torch.Tensor  # (D,) LayerNorm bias
    eps: float  # LayerNorm epsilon
    save: bool  # keep z1, xhat and rstd for the backward


_Out = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.library.custom_op("mage_fast::ian_projection", mutates_args=(), schema=record_schema(IanArgs, _Out, backend=str))
def _ian_projection_op(*inputs: object) -> _Out:
    """IanArgs' fields, then the backend name -> (y (N, D), z1 (N, D), xhat (N, D), rstd (N,)
    fp32); the last three empty if not `save`."""
    return TABLE[inputs[-1]].forward(*inputs[:-1])


def _fwd_fake(x, w1, b1, w2, b2, ln_w, ln_b, eps, save, backend: str = "") -> _Out:
    N, D = x.shape[0], w1.shape[0]
    y = x.new_empty((N, D))
    if not save:
        return y, x.new_empty(0), x.new_empty(0), x.new_empty(0, dtype=torch.float32)
    return y, x.new_empty((N, D)), x.new_empty((N, D)), x.new_empty((N,), dtype=torch.float32)


_ian_projection_op.register_fake(_fwd_fake)


def _setup_context(ctx, inputs, output) -> None:
    x, w1, _, w2, _, ln_w, _, _, save, backend = inputs
    _, z1, xhat, rstd = output
    # z1, xhat and rstd are saved for the backward, not results: they get no gradient (a raw-op
    # caller cannot differentiate them), and autograd builds no zeros tensor of each (two N x D)
    # in every backward.
    ctx.mark_non_differentiable(z1, xhat, rstd)
    ctx.set_materialize_grads(False)
    ctx.save = save
    ctx.backend = backend
    ctx.save_for_backward(x, w1, w2, ln_w, z1, xhat, rstd)


def _grad_like(x, w1, w2, ln_w) -> list[tuple[torch.Tensor, tuple[int, ...]]]:
    """(dtype source, shape) of the grads of (x, w1, b1, w2, b2, ln_w, ln_b)."""
    D = w1.shape[0]
    return [
        (x, tuple(x.shape)),
        (w1, tuple(w1.shape)),
        (w1, (D,)),
        (w2, tuple(w2.shape)),
        (w2, (D,)),
        (ln_w, (D,)),
        (ln_w, (D,)),
    ]


@torch.library.custom_op("mage_fast::ian_projection_backward", mutates_args=())
def _ian_projection_backward_op(
    dy: torch.Tensor,
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    ln_w: torch.Tensor,
    z1: torch.Tensor,
    xhat: torch.Tensor,
    rstd: torch.Tensor,
    needs: list[bool],
    backend: str,
) -> list[torch.Tensor]:
    """Grads of (x, w1, b1, w2, b2, ln_w, ln_b) with `backend`'s kernels; empty (0,) where not needed."""
    grads = TABLE[backend].backward(dy, x, w1, w2, ln_w, z1, xhat, rstd, tuple(needs))
    return [g if g is not None else src.new_empty(0) for g, (src, _) in zip(grads, _grad_like(x, w1, w2, ln_w))]


def _bwd_fake(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs, backend: str = "") -> list[torch.Tensor]:
    like = _grad_like(x, w1, w2, ln_w)
    return [src.new_empty(shape if n else (0,)) for n, (src, shape) in zip(needs, like)]


_ian_projection_backward_op.register_fake(_bwd_fake)


def _backward(ctx, dy, _dz1, _dxhat, _drstd):
    if not ctx.save:
        raise RuntimeError("ian_projection: backward needs the forward run with save=True")
    if dy is None:  # y does not reach the loss
        return (None,) * 10
    x, w1, w2, ln_w, z1, xhat, rstd = ctx.saved_tensors
    needs = tuple(ctx.needs_input_grad[:7])
    row = TABLE[ctx.backend]
    if row.opaque_backward:
        out = _ian_projection_backward_op(dy, x, w1, w2, ln_w, z1, xhat, rstd, list(needs), ctx.backend)
        grads = [g if n else None for g, n in zip(out, needs)]
    else:
        grads = row.backward(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs)
    return (*grads, None, None, None)


_ian_projection_op.register_autograd(_backward, setup_context=_setup_context)


# The C++ ops `mage_fast::ian_projection_fwd` / `_bwd` on their own: fakes for torch.compile, and
# autograd of the forward through the C++ backward, so the low-level op is opcheck-able alone.
if _ext.HAS_C:

    @torch.library.register_fake("mage_fast::ian_projection_fwd")
    def _native_fwd_fake(x, w1, b1, w2, b2, ln_w, ln_b, eps, save):
        torch._check(x.dim() == 2 and w1.dim() == 2, lambda: "ian_projection_fwd: x (N, C), w1 (D, C)")
        return _fwd_fake(x, w1, b1, w2, b2, ln_w, ln_b, eps, save)

    @torch.library.register_fake("mage_fast::ian_projection_bwd")
    def _native_bwd_fake(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs):
        return tuple(_bwd_fake(dy, x, w1, w2, ln_w, z1, xhat, rstd, needs))

    def _native_fwd_setup(ctx, inputs, output) -> None:
        _setup_context(ctx, (*inputs, "cpp"), output)  # "cpp" and "cuda" share the native backward

    def _native_fwd_backward(ctx, *grads):
        return _backward(ctx, *grads)[:9]  # 7 tensor grads, then eps and save

    torch.library.register_autograd(
        "mage_fast::ian_projection_fwd", _native_fwd_backward, setup_context=_native_fwd_setup
    )


def ian_projection(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    ln_w: torch.Tensor,
    ln_b: torch.Tensor,
    eps: float = 1e-5,
    backend: str = "auto",
) -> torch.Tensor:
    """LayerNorm(GELU(x w1^T + b1) w2^T + b2) with exact (erf) GELU.

    Args:
        x: (..., C); w1 (D, C); b1 (D,); w2 (D, D); b2 (D,); ln_w, ln_b (D,): all one float dtype
            (fp32/bf16/fp16) and one device.
        eps: LayerNorm epsilon.
        backend: "auto" | "torch" | "cpp" | "triton" | "cuda".

    Returns:
        (..., D) in x.dtype, accumulated in fp32.
    """
    check_tensor(OP, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{OP}: x must be (..., C), got a 0-D tensor")
    params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "ln_w": ln_w, "ln_b": ln_b}
    for name, t in params.items():
        check_tensor(OP, name, t)
    check_float(OP, "x", x)
    for name, t in params.items():
        check_float(OP, name, t, dtype=x.dtype)
    device = check_same_device(OP, x=x, **params)
    C = x.shape[-1]
    check_tensor(OP, "w1", w1, dim=2)
    D = w1.shape[0]
    check_shape(OP, "w1", w1, (D, C))
    check_shape(OP, "w2", w2, (D, D))
    for name in ("b1", "b2", "ln_w", "ln_b"):
        check_shape(OP, name, params[name], (D,))
    b = _backend.resolve(OP, backend, device)
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params.values()))
    y = _ian_projection_op(*IanArgs(x.reshape(-1, C), w1, b1, w2, b2, ln_w, ln_b, float(eps), save), b)[0]
    return y.reshape(*x.shape[:-1], D)
