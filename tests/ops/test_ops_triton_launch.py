"""The Triton layer: fixed GEMM tiles, the shared GEMM's epilogues and strides, torch.compile."""

from __future__ import annotations

import importlib

import pytest
import torch
from mage_fast.kernels import _gemm, _launch
from opsutil import assert_close32, assert_compiled_matches
from tritonutil import on_device, requires_triton  # noqa: F401  (on_device: autouse fixture)

from mage_fast.ops import ce_mse, ian_projection, patch_pool

pytestmark = requires_triton


def test_interpreter_detected() -> None:
    assert _launch.INTERPRET == _launch.DOT_F32 == (not torch.cuda.is_available())
    assert _launch.dot_precision(torch.float32) == "ieee"  # torch's default "highest"


def test_fixed_gemm_tiles_and_epilogues() -> None:
    # One tile per (shape, dtype, epilogue), chosen without timing: the same bits on every run.
    pick = _launch.gemm_config
    assert pick(40, 24, 20, torch.float32, "acc") is pick(40, 24, 20, torch.float32, "acc")
    big = {e: _launch.gemm_tile_name(4096, 4096, 36864, torch.bfloat16, e) for e in _launch.EPILOGUES}
    assert big == {"none": "wide", "bias_gelu": "square", "gelu_grad": "narrow", "acc": "square"}
    assert min(c.kwargs["BLOCK_M"] for c in _launch.GEMM_TILES.values()) == 64 or _launch.INTERPRET
    a, b = torch.randn(40, 20), torch.randn(20, 24)
    c0 = torch.randn(40, 24)
    c = c0.clone()
    _gemm.matmul(a, b, c, "acc")
    assert_close32("acc once", c, c0 + a @ b)
    aux = torch.randn(40, 24)
    part = torch.zeros(_gemm.part_rows(40), 24)
    out = torch.empty(40, 24)
    _gemm.matmul(a, b, out, "gelu_grad", aux=aux, part=part)
    gelu_grad = importlib.import_module("mage_fast.ops.ian_projection").gelu_grad
    want = (a @ b) * gelu_grad(aux)
    assert_close32("gelu_grad", out, want)
    assert_close32("column sums", part.sum(0), want.sum(0), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemm_strided_operands(dtype: torch.dtype) -> None:
    # Transposes are strides, not copies; 16-bit operands give the exact fp32 product sum.
    a = torch.randn(20, 33).to(dtype).t()  # (33, 20), column-major
    w = torch.randn(45, 20).to(dtype)
    out = torch.empty(33, 45)
    _gemm.matmul(a, w.t(), out)
    assert_close32("a @ w^T", out, a.float() @ w.float().t(), atol=1e-4)


def test_compile_triton_ops() -> None:
    # AOT autograd traces the fakes of the forward and backward custom ops, never a launcher.
    torch._dynamo.reset()
    assert_compiled_matches(
        lambda x: patch_pool(x, (3, 5), 2, backend="triton").square().sum(), [torch.randn(2, 15, 4)]
    )
    C, D = 6, 10
    ts = [torch.randn(3, C), torch.randn(D, C), torch.randn(D), torch.randn(D, D), torch.randn(D)]
    ts += [torch.ones(D), torch.zeros(D)]
    assert_compiled_matches(lambda *t: ian_projection(*t, backend="triton").square().sum(), ts)
    lab = torch.tensor([1, -100, 3, 0, 19])
    tgt, mask = torch.randn(2, 4), torch.tensor([True, False])
    fn = lambda h, w, img: ce_mse(h, w, lab, img, tgt, mask, 0.5, num_items=4, backend="triton")[0]
    assert_compiled_matches(fn, [torch.randn(5, 8), torch.randn(20, 8), torch.randn(2, 4)])
