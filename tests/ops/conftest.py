"""Shared setup of the op tests: few threads (2-core CI shared with other jobs), fixed seed."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads_and_seed():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
