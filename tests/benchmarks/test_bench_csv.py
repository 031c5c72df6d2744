"""The results CSV: keying, append/read round trip, latest-run selection, shape labels."""

from __future__ import annotations

import sys

import pytest
from testutil import ROOT

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import common, opbench  # noqa: E402
from benchmarks.peaks import Peaks, roofline  # noqa: E402


def key_row(**kw: str) -> dict:
    r = {"op": "patch_pool", "provider": "cpp", "mode": "forward", "shape": "B=2,G=6,C=32,k=2",
         "dtype": "float32", "device": "cpu", "commit": "abc", "date": "2026-01-01T00:00:00Z"}  # fmt: skip
    r.update(kw)
    return r


def test_key_columns_lead_the_header() -> None:
    assert common.KEY == ("op", "provider", "mode", "shape", "dtype", "device", "commit", "date")
    assert common.COLUMNS[: len(common.KEY)] == common.KEY
    assert len(set(common.COLUMNS)) == len(common.COLUMNS)


def test_append_read_round_trip_and_rerun_replaces(tmp_path) -> None:
    path = str(tmp_path / "r.csv")
    common.append_rows([key_row(ms_median=1.5), key_row(mode="full", ms_median=3.0)], path)
    common.append_rows([key_row(ms_median=1.25)], path)  # same key: a re-run of the case
    rows = common.read_rows(path)
    assert len(rows) == 2
    by_mode = {r["mode"]: r for r in rows}
    assert by_mode["forward"]["ms_median"] == "1.25" and by_mode["full"]["ms_median"] == "3.0"
    with open(path) as f:
        assert f.readline().strip().split(",") == list(common.COLUMNS)  # one header


def test_append_rejects_unknown_columns_and_missing_keys(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown CSV column"):
        common.append_rows([key_row(speed="fast")], str(tmp_path / "a.csv"))
    bad = key_row()
    bad["commit"] = ""
    with pytest.raises(ValueError, match="lacks key column"):
        common.append_rows([bad], str(tmp_path / "b.csv"))


def test_latest_run_per_op_and_device() -> None:
    rows = [key_row(date="d1"), key_row(date="d2"), key_row(op="ce_mse", date="d1"), key_row(device="h100", date="d3")]
    got = {(r["op"], r["device"], r["date"]) for r in common.latest_run(rows)}
    assert got == {("patch_pool", "cpu", "d2"), ("ce_mse", "cpu", "d1"), ("patch_pool", "h100", "d3")}
    assert {r["date"] for r in common.latest_run(rows, device="cpu", op="patch_pool")} == {"d2"}


def test_shape_label_and_summary() -> None:
    assert opbench.shape_label({"N": 4096, "H": 1024, "V": 32000, "modes": ("full",)}) == "N=4096,H=1024,V=32000"
    t = common.summarize([5.0, 1.0, 3.0])
    assert (t.median, t.p20, t.p80, t.reps) == (3.0, 1.0, 5.0, 3)
    t = common.summarize([float(i) for i in range(1, 11)])
    assert t.median == 5.5 and t.p20 < t.median < t.p80


def test_roofline_percentages() -> None:
    peaks = Peaks(gbps=100.0, tflops=2.0, matmul_dtype="float32")
    r = roofline(1e12, 1e9, 1000.0, "compute", peaks)  # 1 TFLOP in 1 s on a 2 TFLOP/s peak
    assert r["tflops"] == 1.0 and r["gbps"] == 1.0 and r["pct_peak"] == 50.0
    r = roofline(0, 50e9, 1000.0, "memory", peaks)
    assert r["pct_peak"] == 50.0 and r["tflops"] == ""
