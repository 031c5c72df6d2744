"""Shared setup of the op tests: few threads (2-core CI shared with other jobs), fixed seed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opsutil import NATIVE


@pytest.fixture(autouse=True)
def _few_threads_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=NATIVE)
def native(request) -> Iterator[str]:
    """The backend name; for "cuda" torch's default device is the GPU for the test."""
    if request.param == "cpp":
        yield "cpp"
        return
    torch.set_default_device("cuda")
    try:
        yield "cuda"
    finally:
        torch.set_default_device("cpu")
