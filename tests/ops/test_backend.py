"""Backend tables: one form per op, validated at registration; auto per device; clear errors."""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import get_args

import pytest
import torch
from opsutil import ALL_BACKENDS

from mage_fast.model.config import Backend as BackendChoice
from mage_fast.model.config import KernelConfig
from mage_fast.ops import _backend, _ext, available, backend_for, resolve, table
from mage_fast.ops._backend import Backend

OPS = ("patch_pool", "ian_projection", "ce_mse")


def _f(*a):
    return a


def test_auto_on_cpu() -> None:
    assert _ext.HAS_C, _ext.C_IMPORT_ERROR
    assert resolve("patch_pool", "auto", "cpu") == "cpp"
    assert resolve("ian_projection", "auto", "cpu") == "torch"
    assert resolve("ce_mse", "auto", "cpu") == "torch"
    # triton is listed on CPU only under the interpreter (TRITON_INTERPRET=1), never chosen by auto.
    assert [b for b in available("patch_pool", "cpu") if b != "triton"] == ["cpp", "torch"]


def test_one_table_form_per_op() -> None:
    for op in OPS:
        rows = table(op)
        assert set(rows) == set(_backend.BACKENDS), op
        assert all(isinstance(r, Backend) and r.name == n for n, r in rows.items())
        # cpp and cuda are one native path on two devices.
        assert rows["cpp"].forward is rows["cuda"].forward and rows["cpp"].backward is rows["cuda"].backward
        assert backend_for(op, "cpu", "torch") is rows["torch"]
    with pytest.raises(TypeError):
        table("patch_pool")["torch"] = table("patch_pool")["cpp"]  # read-only


def test_backend_names_come_from_the_registry() -> None:
    # The config's Literal spells the names for readers and type checkers; the registry is their
    # source: the Literal, the config's op fields and the tests' backend list follow it.
    assert get_args(BackendChoice) == ("auto", *_backend.BACKENDS)
    assert {f.name for f in fields(KernelConfig)} == set(_backend.ops())
    assert [p.values[0] for p in ALL_BACKENDS] == list(_backend.BACKENDS)


def test_cpp_not_on_other_devices() -> None:
    with pytest.raises(ValueError, match=r"patch_pool: backend 'cpp' is unavailable on device meta: .*C\+\+ CPU"):
        resolve("patch_pool", "cpp", "meta")
    assert resolve("patch_pool", "auto", "meta") == "torch"


def test_errors() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        resolve("nope", "auto", "cpu")
    with pytest.raises(ValueError, match="ce_mse: unknown backend 'fast'"):
        resolve("ce_mse", "fast", "cpu")
    with pytest.raises(ValueError, match="ce_mse: backend 'cuda' is unavailable on device cpu: .*CUDA devices only"):
        resolve("ce_mse", "cuda", "cpu")


@pytest.fixture
def toy(monkeypatch):
    """An empty registry, no validated winners, a fresh log-once memory."""
    monkeypatch.setattr(_backend, "_TABLES", {})
    monkeypatch.setattr(_backend, "_SAID", set())
    monkeypatch.setattr(_backend, "validated", lambda: {})
    return monkeypatch


def test_registration_validates(toy) -> None:
    good = [Backend("torch", _f, _f), Backend("cpp", _f, _f, auto=False)]
    bad = {
        "unknown backend": [Backend("torch", _f), Backend("tpu", _f)],
        "listed twice": [Backend("torch", _f), Backend("torch", _f)],
        "'torch' row": [Backend("cpp", _f)],
        "own backward or none": [Backend("torch", _f, _f), Backend("cpp", _f)],
        "one native path": [Backend("torch", _f), Backend("cpp", _f), Backend("cuda", lambda: 0)],
    }
    for match, rows in bad.items():
        with pytest.raises(ValueError, match=match):
            _backend.register("toy", rows)
    with pytest.raises(TypeError, match="callable forward"):
        _backend.register("toy", [Backend("torch", None)])
    _backend.register("toy", good)
    with pytest.raises(ValueError, match="already registered"):
        _backend.register("toy", good)
    assert resolve("toy", "auto", "cpu") == "torch"  # cpp is opted out of auto
    assert resolve("toy", "cpp", "cpu") == "cpp"
    with pytest.raises(ValueError, match="backend 'triton' is not implemented for toy"):
        resolve("toy", "triton", "cpu")


def test_auto_on_cuda_is_torch_until_validated(toy, caplog) -> None:
    gpu = lambda d: None if d.type == "cuda" else "needs a GPU"
    _backend.register("toy", [Backend("torch", _f), Backend("triton", _f, availability=gpu)])
    cuda = torch.device("cuda", 0)
    cls = _backend.device_class(cuda)
    with caplog.at_level(logging.WARNING, logger="mage_fast.ops"):
        assert resolve("toy", "auto", cuda) == "torch"
        assert resolve("toy", "auto", cuda) == "torch"
    said = [r.message for r in caplog.records if "toy" in r.message]
    assert len(said) == 1 and "no backend is validated" in said[0] and "make gpu-check" in said[0]
    assert resolve("toy", "triton", cuda) == "triton"  # a named choice is the user's
    toy.setattr(_backend, "validated", lambda: {"toy": {cls: "triton"}})
    assert resolve("toy", "auto", cuda) == "triton"
    assert resolve("toy", "auto", "cpu") == "torch"


def test_validated_file_in_repo() -> None:
    data = json.loads(_backend.VALIDATED_PATH.read_text())
    for op, winners in data["winners"].items():
        assert op in OPS
        assert all(b in table(op) for b in winners.values())
