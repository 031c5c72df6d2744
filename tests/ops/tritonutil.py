"""Shared setup of the Triton op tests: the device they run on and the skip rule.

On a CUDA machine the tests run on the GPU (torch's default device is switched for each test, so
the shared `make` helpers build CUDA tensors); elsewhere on CPU under the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1 before mage_fast is imported).
"""

from __future__ import annotations

import pytest
import torch

from mage_fast.ops import _triton

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
requires_triton = pytest.mark.skipif(
    _triton.unavailable_reason(DEV) is not None,
    reason=f"Triton unavailable on {DEV}: {_triton.unavailable_reason(DEV)}",
)


@pytest.fixture(autouse=True)
def on_device():
    """Tensors of the test are created on DEV (a no-op on CPU)."""
    if DEV.type == "cpu":
        yield
        return
    torch.set_default_device(DEV)
    try:
        yield
    finally:
        torch.set_default_device("cpu")
