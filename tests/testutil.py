"""Helpers shared by test modules (a unique module name: several folders have a conftest.py)."""

from __future__ import annotations

import os

from mage_fast.model.config import AlignerConfig, LLMConfig, ModelConfig, VisionConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config(aligner: str = "ian") -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(
            image_size=24, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2
        ),
        aligner=AlignerConfig(type=aligner, pool_k=2, num_heads=2, mlp_ratio=1.0),
        llm=LLMConfig(
            hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2, max_position_embeddings=128
        ),
    )
