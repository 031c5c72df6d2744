"""`mage_fast::patch_pool`: k x k average pooling of a (H, W) token grid, in token layout.

x (B, H*W, C), row-major grid (token t = h*W + w) -> y (B, ceil(H/k)*ceil(W/k), C). Edge cells
average only the grid cells that exist (avg_pool2d with ceil_mode=True, count_include_pad=False).

Backends: `torch` (channels-last avg_pool2d forward, broadcast backward; any device), `triton`
(kernels/patch_pool.py: CUDA, or CPU under TRITON_INTERPRET=1), and the native C++ op as `cpp`
(csrc/cpu/patch_pool.cpp) and `cuda` (csrc/cuda/patch_pool.cu).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mage_fast.ops import _backend, _ext, _triton
from mage_fast.ops._checks import check_float, check_pos_int, check_tensor

OP = "patch_pool"


def _out_grid(H: int, W: int, k: int) -> tuple[int, int]:
    return -(-H // k), -(-W // k)


def _cell_counts(H: int, W: int, k: int, device: torch.device) -> torch.Tensor:
    """(Ho, 1, Wo, 1, 1) fp32 number of existing grid cells in each output cell (for backward)."""
    Ho, Wo = _out_grid(H, W, k)
    rows = (H - torch.arange(Ho, device=device) * k).clamp(max=k)
    cols = (W - torch.arange(Wo, device=device) * k).clamp(max=k)
    return (rows[:, None] * cols[None, :]).float().view(Ho, 1, Wo, 1, 1)


def _fwd_torch(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    B, _, C = x.shape
    # (B, H, W, C) seen as NCHW has channels-last strides: avg_pool2d runs its NHWC kernel on the
    # token layout without a copy (fp32 accumulation for bf16/fp16 on CPU and CUDA) and returns
    # channels-last, i.e. token layout again: no pad + reshape + sum copies (benchmarks/NOTES.md).
    img = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    y = F.avg_pool2d(img, k, stride=k, ceil_mode=True, count_include_pad=False)
    return y.permute(0, 2, 3, 1).reshape(B, y.shape[2] * y.shape[3], C)


def _bwd_torch(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    B, _, C = grad_y.shape
    Ho, Wo = _out_grid(H, W, k)
    g = grad_y.float().reshape(B, Ho, 1, Wo, 1, C) / _cell_counts(H, W, k, grad_y.device)
    g = g.expand(B, Ho, k, Wo, k, C).reshape(B, Ho * k, Wo * k, C)[:, :H, :W]
    return g.reshape(B, H * W, C).to(grad_y.dtype)


def _fwd_native(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    # csrc/cpu/patch_pool.cpp or csrc/cuda/patch_pool.cu: the dispatcher picks x's device.
    return torch.ops.mage_fast.patch_pool_fwd(x, H, W, k)


def _bwd_native(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    return torch.ops.mage_fast.patch_pool_bwd(grad_y, H, W, k)


def _fwd_triton(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    return _triton.kernels.patch_pool_fwd(x, H, W, k)


def _bwd_triton(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
    return _triton.kernels.patch_pool_bwd(grad_y, H, W, k)


TABLE = _backend.register(
    OP,
    (
        _backend.Backend("torch", _fwd_torch, _bwd_torch),
        _backend.Backend(
            "triton", _fwd_triton, _bwd_triton, _triton.unavailable_reason, _triton.auto_ok, opaque_backward=True
        ),
        *_ext.native_rows("patch_pool_fwd", _fwd_native, _bwd_native),
    ),
)


@torch.library.custom_op("mage_fast::patch_pool", mutates_args=())
def _patch_pool_op(x: torch.Tensor, H: int, W: int, k: int, backend: str) -> torch.Tensor:
    """x (B, H*W, C) -> y (B, ceil(H/k)*ceil(W/k), C) with the resolved `backend`."""
    return TABLE[backend].forward(x, H, W, k)


def _fwd_fake(x: torch.Tensor, H: int, W: int, k: int, backend: str = "") -> torch.Tensor:
    Ho, Wo = _out_grid(H, W, k)
    return x.new_empty((x.shape[0], Ho * Wo, x.shape[2]))


_patch_pool_op.register_fake(_fwd_fake)


def _setup_context(ctx, inputs, output) -> None:
    _, ctx.H, ctx.W, ctx.k, ctx.backend = inputs


@torch.library.custom_op("mage_fast::patch_pool_backward", mutates_args=())
def _patch_pool_backward_op(grad_y: torch.Tensor, H: int, W: int, k: int, backend: str) -> torch.Tensor:
    """grad_y (B, ceil(H/k)*ceil(W/k), C) -> grad_x (B, H*W, C) with `backend`'s kernel."""
    return TABLE[backend].backward(grad_y, H, W, k)


def _bwd_fake(grad_y: torch.Tensor, H: int, W: int, k: int, backend: str = "") -> torch.Tensor:
    return grad_y.new_empty((grad_y.shape[0], H * W, grad_y.shape[2]))


_patch_pool_backward_op.register_fake(_bwd_fake)


def _backward(ctx, grad_y: torch.Tensor):
    row = TABLE[ctx.backend]
    if row.opaque_backward:
        gx = _patch_pool_backward_op(grad_y, ctx.H, ctx.W, ctx.k, ctx.backend)
    else:
        gx = row.backward(grad_y, ctx.H, ctx.W, ctx.k)
    return gx, None, None, None, None


def _backward_of_backward(ctx, grad_gx: torch.Tensor):
    # The pooling backward is linear and its adjoint is the forward: differentiable to any order.
    return _patch_pool_op(grad_gx, ctx.H, ctx.W, ctx.k, ctx.backend), None, None, None, None


_patch_pool_op.register_autograd(_backward, setup_context=_setup_context)
_patch_pool_backward_op.register_autograd(_backward_of_backward, setup_context=_setup_context)


# The C++ ops `mage_fast::patch_pool_fwd` / `_bwd` on their own: fakes for torch.compile, and
# autograd (each is the other's adjoint, so both are differentiable to any order).
if _ext.HAS_C:

    @torch.library.register_fake("mage_fast::patch_pool_fwd")
    def _native_fwd_fake(x: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
        torch._check(x.dim() == 3 and k >= 1, lambda: "patch_pool_fwd: x must be (B, H*W, C), k >= 1")
        return _fwd_fake(x, H, W, k)

    @torch.library.register_fake("mage_fast::patch_pool_bwd")
    def _native_bwd_fake(grad_y: torch.Tensor, H: int, W: int, k: int) -> torch.Tensor:
        torch._check(grad_y.dim() == 3 and k >= 1, lambda: "patch_pool_bwd: grad_y must be 3-D, k >= 1")
        return _bwd_fake(grad_y, H, W, k)

    def _native_setup(ctx, inputs, output) -> None:
        _, ctx.H, ctx.W, ctx.k = inputs

    def _native_fwd_backward(ctx, grad_y: torch.Tensor):
        return _bwd_native(grad_y, ctx.H, ctx.W, ctx.k), None, None, None

    def _native_bwd_backward(ctx, grad_gx: torch.Tensor):
        return _fwd_native(grad_gx, ctx.H, ctx.W, ctx.k), None, None, None

    torch.library.register_autograd("mage_fast::patch_pool_fwd", _native_fwd_backward, setup_context=_native_setup)
    torch.library.register_autograd("mage_fast::patch_pool_bwd", _native_bwd_backward, setup_context=_native_setup)


def patch_pool(x: torch.Tensor, grid: tuple[int, int], k: int = 2, backend: str = "auto") -> torch.Tensor:
    """Average-pool k x k cells of a token grid.

    Args:
        x: (B, H*W, C) fp32/bf16/fp16 tokens in row-major grid order.
        grid: (H, W), the token grid.
        k: cell side; edge cells (when k does not divide H or W) average only existing tokens.
        backend: "auto" | "torch" | "cpp" | "triton" | "cuda".

    Returns:
        (B, ceil(H/k)*ceil(W/k), C) in x.dtype (accumulated in fp32).
    """
    check_tensor(OP, "x", x, dim=3)
    check_float(OP, "x", x)
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise ValueError(f"{OP}: grid must be (H, W), got {grid!r}")
    H = check_pos_int(OP, "grid H", grid[0])
    W = check_pos_int(OP, "grid W", grid[1])
    k = check_pos_int(OP, "k", k)
    if x.shape[1] != H * W:
        raise ValueError(f"{OP}: x.shape[1] must be H*W = {H}*{W} = {H * W}, got shape {tuple(x.shape)}")
    return _patch_pool_op(x, H, W, k, _backend.resolve(OP, backend, x.device))
