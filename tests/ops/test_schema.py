"""Custom-op schemas made from the typed records of the ops' inputs (`mage_fast.ops._schema`): the
same schema `torch.library.custom_op` infers from a hand-written signature, and the records of
ian_projection and ce_mse as the argument lists of both their Python and their C++ ops."""

from __future__ import annotations

import importlib
from typing import NamedTuple

import pytest
import torch

from mage_fast.ops import _ext
from mage_fast.ops._schema import record_schema

ian_mod = importlib.import_module("mage_fast.ops.ian_projection")


class _Record(NamedTuple):
    x: torch.Tensor
    n: int
    scale: float | None
    flag: bool


def _by_hand(x: torch.Tensor, n: int, scale: float | None, flag: bool, backend: str) -> list[torch.Tensor]:
    raise AssertionError("a prototype: never called")


def test_record_schema_is_the_inferred_one() -> None:
    got = record_schema(_Record, list[torch.Tensor], backend=str)
    assert got == torch.library.infer_schema(_by_hand, mutates_args=())
    assert got == "(Tensor x, SymInt n, float? scale, bool flag, str backend) -> Tensor[]"


def test_record_schema_refuses_an_unsupported_field() -> None:
    class Bad(NamedTuple):
        x: torch.Tensor
        d: dict

    with pytest.raises(ValueError, match="Parameter d has unsupported type"):
        record_schema(Bad, torch.Tensor)


@pytest.mark.skipif(not _ext.HAS_C, reason=_ext.C_IMPORT_ERROR or "")
def test_ian_projection_schemas_follow_the_record() -> None:
    fields = list(ian_mod.IanArgs._fields)
    op = [a.name for a in torch.ops.mage_fast.ian_projection.default._schema.arguments]
    native = [a.name for a in torch.ops.mage_fast.ian_projection_fwd.default._schema.arguments]
    assert op == [*fields, "backend"] and native == fields
