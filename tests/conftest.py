"""Shared fixtures: a tiny shapes world and a tiny model config (CPU, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run under the interpreter. Triton reads TRITON_INTERPRET when a
# kernel is decorated (when mage_fast.kernels is first imported), so it must be set before any
# mage_fast import; launched subprocesses (deepspeed ranks) inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from mage_fast.model.config import AlignerConfig, LLMConfig, ModelConfig, VisionConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def tiny_model_config(aligner: str = "ian") -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(image_size=24, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
        aligner=AlignerConfig(type=aligner, pool_k=2, num_heads=2, mlp_ratio=1.0),
        llm=LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2,
                      max_position_embeddings=128),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
