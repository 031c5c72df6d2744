"""Backend resolution: auto order, clear errors, the registration hook for later kernels."""

from __future__ import annotations

import pytest
import torch

from mage_fast.ops import _backend, _ext, available, resolve


def test_auto_today() -> None:
    assert _ext.HAS_C, _ext.C_IMPORT_ERROR
    assert resolve("patch_pool", "auto", "cpu") == "cpp"
    assert resolve("ian_projection", "auto", "cpu") == "torch"
    assert resolve("ce_mse", "auto", "cpu") == "torch"
    # triton is listed on CPU only under the interpreter (TRITON_INTERPRET=1), never chosen by auto.
    assert [b for b in available("patch_pool", "cpu") if b != "triton"] == ["cpp", "torch"]


def test_cpp_not_on_other_devices() -> None:
    # The C++ extension of this build has no kernel for meta/CUDA devices: a reasoned ValueError.
    with pytest.raises(ValueError, match=r"patch_pool: backend 'cpp' is unavailable on device meta: .*no C\+\+"):
        resolve("patch_pool", "cpp", "meta")
    assert resolve("patch_pool", "auto", "meta") == "torch"


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        resolve("nope", "auto", "cpu")
    with pytest.raises(ValueError, match="ce_mse: unknown backend 'fast'"):
        resolve("ce_mse", "fast", "cpu")
    with pytest.raises(ValueError, match="ce_mse: backend 'cuda' is unavailable on device cpu: .*CUDA devices only"):
        resolve("ce_mse", "cuda", "cpu")


def test_register_hook(monkeypatch) -> None:
    # How a Triton/CUDA issue plugs in: register with an availability function.
    monkeypatch.setattr(_backend, "_REGISTRY", {})
    _backend.register("toy", "torch")
    _backend.register("toy", "triton", lambda d: None if d.type == "cuda" else "needs a GPU")
    _backend.register("toy", "cpp", auto=False)
    assert resolve("toy", "auto", "cpu") == "torch"  # cpp is opted out of auto
    assert resolve("toy", "cpp", "cpu") == "cpp"
    assert resolve("toy", "auto", torch.device("cuda", 0)) == "triton"
    with pytest.raises(ValueError, match="toy: backend 'triton' is unavailable on device cpu: needs a GPU"):
        resolve("toy", "triton", "cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        _backend.register("toy", "tpu")
