"""A tiny random model export (seconds) shared by the evals tests."""

from __future__ import annotations

import pytest
import torch
from testutil import tiny_model_config


@pytest.fixture(scope="session")
def tiny_export(tokenizer, tmp_path_factory) -> str:
    from mage_fast.export import pretrained
    from mage_fast.model.mllm import MageModel
    from mage_fast.train.engine import export_state

    torch.manual_seed(0)
    model = MageModel(tiny_model_config("mlp2x_gelu"), len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    out = str(tmp_path_factory.mktemp("tiny") / "export")
    pretrained.write_export(out, model.eval(), tokenizer, export_state(model))
    return out
