"""Comparison helpers of the op tests (the low-precision rule: mage_fast/ops/reference.py), the
backend list and the device each backend is tested on."""

from __future__ import annotations

import contextlib
import os
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


def backend_device(backend: str) -> torch.device:
    """Where the op tests run `backend`: the GPU for "cuda" (and "triton" on a CUDA machine)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def backend_skip_reason(backend: str) -> str | None:
    """Why `backend` cannot be tested on this machine (None: it runs)."""
    from mage_fast.ops import _ext, _triton

    if backend == "cpp":
        return _ext.cpp_unavailable_reason("patch_pool_fwd", torch.device("cpu"))
    if backend == "triton":
        return _triton.unavailable_reason(backend_device("triton"))
    if backend == "cuda":
        return _cuda_kernels_reason()
    return None


def expected_backends() -> dict[str, str]:
    """Backends this machine is expected to test, with why; MAGE_FAST_TEST_SKIP=name,... lists the
    ones a run skips on purpose (so a skip is a decision, never an accident)."""
    import importlib.util

    want = {"torch": "pure torch runs everywhere", "cpp": "`make install` builds mage_fast._C"}
    if importlib.util.find_spec("triton") is not None:
        want["triton"] = "triton is installed (CPU: under TRITON_INTERPRET=1, which tests/conftest.py sets)"
    if torch.cuda.is_available():
        want["cuda"] = "a CUDA device is visible"
    skip = {b.strip() for b in os.environ.get("MAGE_FAST_TEST_SKIP", "").split(",") if b.strip()}
    return {b: why for b, why in want.items() if b not in skip}


def _param(backend: str):
    why = backend_skip_reason(backend)
    return pytest.param(backend, marks=pytest.mark.skipif(why is not None, reason=str(why)))


# The C++ backends: "cpp" (CPU twins) everywhere, "cuda" (csrc/cuda) on a GPU with a CUDA build.
# The "cuda" cases run the same assertions with every tensor created on the GPU.
_NO_CUDA = _cuda_kernels_reason()
NATIVE = ["cpp", _param("cuda")]
# Every backend of the ops, each skipped with its reason where it cannot run here
# (test_expected_backends.py fails when an expected one is skipped).
ALL_BACKENDS = [_param(b) for b in ("torch", "cpp", "triton", "cuda")]


@contextlib.contextmanager
def device_for(backend: str) -> Iterator[None]:
    """torch's default device while testing `backend` (backend_device)."""
    dev = backend_device(backend)
    if dev.type == "cpu":
        yield
        return
    torch.set_default_device(dev)
    try:
        yield
    finally:
        torch.set_default_device("cpu")


def assert_compiled_matches(fn, inputs: list[torch.Tensor]) -> None:
    """fn(*inputs) (a 0-dim loss) under torch.compile (fullgraph, aot_eager: no C++ codegen)
    equals eager, value and input grads."""
    a, b = leaves(*inputs), leaves(*inputs)
    out = fn(*a)
    out.backward()
    cout = torch.compile(fn, backend="aot_eager", fullgraph=True)(*b)
    cout.backward()
    assert_close32("out", cout, out)
    for x, y in zip(a, b):
        assert_close32("grad", y.grad, x.grad)
