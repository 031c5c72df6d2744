"""Shared fixtures: a tiny shapes world and its tokenizer (CPU, seconds). Helpers: testutil.py."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from testutil import remove_ds_shm_buffers

# Without a GPU the Triton kernels run under the interpreter. Triton reads TRITON_INTERPRET when a
# kernel is decorated (when mage_fast.kernels is first imported), so it must be set before any
# mage_fast import; launched subprocesses (deepspeed ranks) inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The venv's tools first on PATH for this process and every launch: DeepSpeed's JIT ops (built by
# `make install`) are rebuilt by torch whenever another `ninja` version than the last one looks at
# them: ~25-40 s per op at every switch between the system's and the venv's.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    from mage_fast.shapes.scenes import generate

    out = str(tmp_path_factory.mktemp("shapes"))
    generate(out, n=60, seed=0)
    return out


@pytest.fixture(scope="session")
def tokenizer(shapes_dir):
    from transformers import AutoTokenizer

    from mage_fast.data.tokens import ensure_special_tokens

    tok = AutoTokenizer.from_pretrained(os.path.join(shapes_dir, "tokenizer"))
    ensure_special_tokens(tok)
    return tok


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
    remove_ds_shm_buffers()


def pytest_collection_modifyitems(config, items) -> None:
    """Files with slow tests (real launches) first, each file's tests kept together and in order:
    `make test` hands whole files to its workers in this order, so the long files start first and
    the short ones fill in at the end, and the workers finish close together."""
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
