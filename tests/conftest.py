"""Shared fixtures: a tiny shapes world and its tokenizer (CPU, seconds). Helpers: testutil.py."""

from __future__ import annotations

import os

import pytest
import torch
from testutil import remove_ds_shm_buffers

# Without a GPU the Triton kernels run under the interpreter. Triton reads TRITON_INTERPRET when a
# kernel is decorated (when mage_fast.kernels is first imported), so it must be set before any
# mage_fast import; launched subprocesses (deepspeed ranks) inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    from mage_fast.data.shapes import generate

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
