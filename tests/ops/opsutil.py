"""Comparison helpers of the op tests (DESIGN.md §3 tolerance rule)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch


def diffs(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max, mean) absolute difference in fp32."""
    d = (a.detach().float() - b.detach().float()).abs()
    if d.numel() == 0:
        return 0.0, 0.0
    return d.max().item(), d.mean().item()


def assert_close32(name: str, out: torch.Tensor, ref: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-5):
    """Tight fp32 comparison; prints the differences first."""
    mx, mean = diffs(out, ref)
    print(f"{name}: fp32 max|d|={mx:.3e} mean|d|={mean:.3e}")
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol, msg=name)


def assert_lowp(
    name: str,
    out: torch.Tensor,
    ref_lowp: torch.Tensor,
    ref32: torch.Tensor,
    atol: float = 1e-3,
    factor: float = 2.0,
):
    """Low-precision rule: |out - ref32| <= factor * |ref_lowp - ref32| + atol (max norm), where
    ref_lowp is the reference run in the same low precision and ref32 the fp32 reference on the
    same (rounded) inputs."""
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    assert out.dtype == ref_lowp.dtype, f"{name}: dtype {out.dtype} != {ref_lowp.dtype}"
    err, err_mean = diffs(out, ref32)
    ref_err, ref_mean = diffs(ref_lowp, ref32)
    print(
        f"{name}: {out.dtype} max|d|={err:.3e} mean|d|={err_mean:.3e}; "
        f"reference's own max|d|={ref_err:.3e} mean|d|={ref_mean:.3e}"
    )
    assert torch.isfinite(out.float()).all(), f"{name}: non-finite values"
    assert err <= factor * ref_err + atol, f"{name}: error {err:.3e} > {factor}*{ref_err:.3e} + {atol}"


def grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor) -> list[torch.Tensor]:
    """d(out . grad_out)/d inputs (zeros for inputs that out does not depend on)."""
    gs = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(i) if g is None else g for g, i in zip(gs, inputs)]


def leaves(*ts: torch.Tensor, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Detached copies (optionally cast) that require grad."""
    return [t.detach().to(dtype or t.dtype).clone().requires_grad_(True) for t in ts]


def _cuda_kernels_reason() -> str | None:
    if not torch.cuda.is_available():
        return "backend 'cuda' needs a CUDA device"
    from mage_fast.ops import _ext

    return _ext.cpp_unavailable_reason("ce_mse_fwd", torch.device("cuda"))


# The C++ backends: "cpp" (CPU twins) everywhere, "cuda" (csrc/cuda) on a GPU with a CUDA build.
# The "cuda" cases run the same assertions with every tensor created on the GPU.
_NO_CUDA = _cuda_kernels_reason()
NATIVE = ["cpp", pytest.param("cuda", marks=pytest.mark.skipif(_NO_CUDA is not None, reason=str(_NO_CUDA)))]


@contextlib.contextmanager
def device_for(backend: str) -> Iterator[None]:
    """torch's default device while testing `backend`: the GPU for "cuda", else unchanged."""
    if backend != "cuda":
        yield
        return
    torch.set_default_device("cuda")
    try:
        yield
    finally:
        torch.set_default_device("cpu")
