"""The import flow of docs/architecture.md: floors, no cycles, no imports of ours inside functions.

Sources are read with `ast` (tests/archcheck.py); nothing is imported, so the check is fast.
"""

from __future__ import annotations

import archcheck
import pytest
from testutil import ROOT

# Imports of our modules inside a function that stay, each with its reason.
_FAST_CONFIG_ERRORS = (
    "the entry point reads the config before DeepSpeed and transformers load: a bad key fails in a second"
)
_GATE_RECORDS_IMPORT_ERRORS = (
    "the GPU gate imports each op inside its check: an op that fails to import on the device machine "
    "fails its own check (no passed line) while the gate goes on to the others"
)
IN_FUNCTION_ALLOWED: dict[tuple[str, str], str] = {
    ("benchmarks.gpu_validate", "mage_fast.ops"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.gpu_validate", "mage_fast.ops._ext"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.gpu_validate", "mage_fast.ops.ce_mse"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.gpu_validate", "mage_fast.ops.ian_projection"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.gpu_validate", "mage_fast.ops.patch_pool"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.gpu_validate", "mage_fast.ops.reference"): _GATE_RECORDS_IMPORT_ERRORS,
    ("benchmarks.plot", "benchmarks.bench_packing"): (
        "plot draws bench_packing's bars only for packing rows; bench_packing loads DeepSpeed (via bench_step)"
    ),
    ("mage_fast.train.__main__", "mage_fast.data.llava"): _FAST_CONFIG_ERRORS,
    ("mage_fast.train.__main__", "mage_fast.train.checkpoint"): _FAST_CONFIG_ERRORS,
    ("mage_fast.train.__main__", "mage_fast.train.dist"): _FAST_CONFIG_ERRORS,
    ("mage_fast.train.__main__", "mage_fast.train.loop"): _FAST_CONFIG_ERRORS,
    ("mage_fast.train.__main__", "mage_fast.train.preempt"): _FAST_CONFIG_ERRORS,
}


@pytest.fixture(scope="module")
def imports() -> list[archcheck.Import]:
    return archcheck.all_imports(ROOT)


def test_imports_follow_the_floors(imports):
    assert [archcheck.describe(i) for i in archcheck.against_flow(imports)] == []


def test_no_cycles(imports):
    assert archcheck.cycles(imports) == []


def test_no_imports_of_ours_inside_functions(imports):
    found = archcheck.in_function(imports)
    assert [archcheck.describe(i) for i in found if (i.src, i.dst) not in IN_FUNCTION_ALLOWED] == []


def test_allow_list_is_current(imports):
    """An allowed import that is gone (or now at module top) is struck off the list."""
    inside = {(i.src, i.dst) for i in archcheck.in_function(imports)}
    assert sorted(set(IN_FUNCTION_ALLOWED) - inside) == []


def test_every_floor_may_import_only_known_floors():
    assert all(allowed <= set(archcheck.FLOORS) for allowed in archcheck.FLOORS.values())


def _synthetic(sources: dict[str, str]) -> list[archcheck.Import]:
    out = []
    for name, src in sources.items():
        out.extend(archcheck.imports_of(name, src, False, sources))
    return out


def test_check_fails_on_an_import_up_the_floors():
    found = _synthetic(
        {
            "mage_fast.model.x": "from mage_fast.data import y\nfrom mage_fast.ops import z\n",
            "mage_fast.data.y": "",
            "mage_fast.ops.z": "",
        }
    )
    assert [(i.src, i.dst) for i in archcheck.against_flow(found)] == [("mage_fast.model.x", "mage_fast.data.y")]


def test_check_fails_on_a_module_in_no_floor():
    found = _synthetic({"mage_fast.loose": "import mage_fast.labels\n", "mage_fast.labels": ""})
    assert [i.src for i in archcheck.against_flow(found)] == ["mage_fast.loose"]


def test_check_finds_a_cycle_hidden_in_a_function():
    found = _synthetic(
        {
            "mage_fast.model.a": "from . import b\n",
            "mage_fast.model.b": "def f():\n    from mage_fast.model.a import g\n",
            "mage_fast.model.c": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mage_fast.model import a\n",
        }
    )
    assert archcheck.cycles(found) == [["mage_fast.model.a", "mage_fast.model.b"]]
    assert [(i.src, i.dst) for i in archcheck.in_function(found)] == [("mage_fast.model.b", "mage_fast.model.a")]
