"""Shared setup of the op tests: few threads (2-core CI shared with other jobs), fixed seed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from opsutil import ALL_BACKENDS, NATIVE, device_for


@pytest.fixture(autouse=True)
def _few_threads_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=NATIVE)
def native(request) -> Iterator[str]:
    """The C++ backend of the test; for "cuda" its tensors are created on the GPU."""
    with device_for(request.param):
        yield request.param


@pytest.fixture(params=ALL_BACKENDS)
def backend(request) -> Iterator[str]:
    """Every backend of the ops in turn; its tensors are created on its device (device_for)."""
    with device_for(request.param):
        yield request.param
