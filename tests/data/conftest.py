"""Fixtures for tests/data; helpers live in _data_helpers.py (importable from the test modules)."""

from __future__ import annotations

import pytest
from _data_helpers import make_tokenizer
from transformers import PreTrainedTokenizerFast


@pytest.fixture
def tok() -> PreTrainedTokenizerFast:
    """Word-level tokenizer without chat_template (built-in LLaVA-v1 template route)."""
    return make_tokenizer()


@pytest.fixture
def chat_tok() -> PreTrainedTokenizerFast:
    """Same vocab with a ChatML-like Jinja chat_template."""
    return make_tokenizer(chat=True)
