"""Fixtures of the training tests (real launches: tests/launchutil.py)."""

from __future__ import annotations

import pytest
from adapterutil import MODEL, write_base_export
from launchutil import STRICT_ZERO3, launch


@pytest.fixture(scope="module")
def strict_zero3() -> str:
    """configs/deepspeed/zero3_strict.json: ZeRO-3 with every parameter partitioned (persistence
    threshold 0), so the fused loss and every module see gathered weights."""
    return STRICT_ZERO3


@pytest.fixture(scope="module")
def adapter_base(tokenizer, tmp_path_factory) -> str:
    """The stage-1 export the LoRA and QLoRA runs start from (random weights, adapterutil.MODEL)."""
    return write_base_export(str(tmp_path_factory.mktemp("base") / "export"), tokenizer, MODEL)


@pytest.fixture(scope="module")
def adapter_ref(adapter_args, tmp_path_factory) -> str:
    """The 2-rank reference run of an adapter test module's `adapter_args` (its arguments but
    run_dir; adapterutil.AdapterRunChecks says what they hold)."""
    run = str(tmp_path_factory.mktemp("adapter") / "ref")
    launch([f"run_dir={run}", *adapter_args])
    return run
