"""The ops at the model's production shapes on CUDA, every GPU backend (torch, triton, cuda), bf16
by the low-precision rule against the fp32 reference on the same rounded inputs. Skipped without
a CUDA device: `make gpu-check` runs them (its `-k production`).

ce_mse at N=7000, H=4096, V=128256 walks two GPU chunks, 3584 and 3416 rows (the planner on
h100/h200), so the chunk boundary, a partial last chunk and the fp32 grad_weight accumulation
across chunks are covered.
"""

from __future__ import annotations

import pytest
import torch
from opsutil import assert_lowp, backend_skip_reason, grads

from mage_fast.ops import ce_mse, ian_projection, patch_pool
from mage_fast.ops.reference import ce_mse_ref, ian_projection_ref, patch_pool_ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="production shapes run on a CUDA device")
BF16 = torch.bfloat16


def _backends() -> list:
    out = []
    for b in ("torch", "triton", "cuda"):
        why = backend_skip_reason(b) if torch.cuda.is_available() else None
        out.append(pytest.param(b, marks=pytest.mark.skipif(why is not None, reason=str(why))))
    return out


def _three(fn, inputs: list[torch.Tensor], diff: list[int], dtype: torch.dtype, seed: int = 1) -> list[torch.Tensor]:
    """[fn's output, grads w.r.t. inputs[diff]] with inputs cast to `dtype` (ints kept)."""
    ins = [t.to(dtype) if t.is_floating_point() else t for t in inputs]
    for i in diff:
        ins[i] = ins[i].detach().requires_grad_(True)
    out = fn(*ins)
    g = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(seed), device="cuda").to(out.dtype)
    return [out.detach(), *grads(out, [ins[i] for i in diff], g)]


def _compare(names: list[str], fn, ref, inputs: list[torch.Tensor], diff: list[int]) -> None:
    rounded = [t.to(BF16) if t.is_floating_point() else t for t in inputs]
    got = _three(fn, rounded, diff, BF16)
    low = _three(ref, rounded, diff, BF16)
    ref32 = _three(ref, rounded, diff, torch.float32)
    for name, a, lo, r in zip(names, got, low, ref32):
        assert_lowp(name, a, lo.to(a.dtype), r, atol=1e-3 * r.abs().max().item())


@pytest.mark.parametrize("backend", _backends())
def test_production_ce_mse(backend: str) -> None:
    N, H, V, M = 7000, 4096, 128256, 8
    torch.manual_seed(0)
    labels = torch.randint(0, V, (N,), device="cuda")
    labels[::8] = -100
    mask = torch.ones(M, dtype=torch.bool, device="cuda")
    mask[-1] = False
    ins = [torch.randn(N, H, device="cuda"), torch.randn(V, H, device="cuda") * H**-0.5, labels]
    ins += [torch.randn(M, H, device="cuda"), torch.randn(M, H, device="cuda"), mask]

    def op(h, w, lab, img, tgt, m):
        return torch.stack(ce_mse(h, w, lab, img, tgt, m, 0.5, backend=backend))

    def ref(h, w, lab, img, tgt, m):
        return torch.stack(ce_mse_ref(h, w, lab, img, tgt, m, 0.5))

    _compare(["loss_ce_mse", "grad_hidden", "grad_weight", "grad_img"], op, ref, ins, [0, 1, 3])


@pytest.mark.parametrize("backend", _backends())
def test_production_ian_projection(backend: str) -> None:
    N, C, D = 8 * 576, 1024, 4096
    torch.manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda")  # noqa: E731
    ins = [r(N, C), r(D, C) * C**-0.5, 0.1 * r(D), r(D, D) * D**-0.5, 0.1 * r(D), 1 + 0.1 * r(D), 0.1 * r(D)]
    names = ["y", "grad_x", "grad_w1", "grad_b1", "grad_w2", "grad_b2", "grad_ln_w", "grad_ln_b"]
    op = lambda *a: ian_projection(*a, backend=backend)  # noqa: E731
    _compare(names, op, ian_projection_ref, ins, list(range(7)))


@pytest.mark.parametrize("backend", _backends())
def test_production_patch_pool(backend: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 24 * 24, 1024, device="cuda")
    op = lambda t: patch_pool(t, (24, 24), 2, backend=backend)  # noqa: E731
    _compare(["y", "grad_x"], op, lambda t: patch_pool_ref(t, (24, 24), 2), [x], [0])
