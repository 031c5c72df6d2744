"""A custom op's schema from the typed record of its inputs.

An op whose inputs are a typed NamedTuple (`CeMseArgs`, `IanArgs`) declares its flat schema from
that record instead of listing the fields again: `torch.library.custom_op(..., schema=...)`
with `record_schema(Record, returns, backend=str)`. The record is then the op's one argument
list; the schema is exactly the one `custom_op` infers from a function with those parameters.
"""

from __future__ import annotations

import inspect
import typing

import torch


def record_schema(record: type[tuple], returns: object, **extra: type) -> str:
    """The schema of a function taking `record`'s fields (in order, with their annotations), then
    `extra` (name=type, in order), and returning `returns`, as `torch.library.infer_schema` writes
    it: e.g. "(Tensor x, float eps, str backend) -> Tensor". No argument is mutated."""
    hints = typing.get_type_hints(record)
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind, annotation=hints[n]) for n in record._fields]
    params += [inspect.Parameter(n, kind, annotation=t) for n, t in extra.items()]

    def prototype(*args: object) -> None:
        """Carries the signature for infer_schema; never called."""

    prototype.__signature__ = inspect.Signature(params, return_annotation=returns)
    return torch.library.infer_schema(prototype, mutates_args=())
