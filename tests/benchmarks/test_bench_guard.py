"""benchmarks/guard.py's comparison logic on hand-made rows (no timing, no torch work)."""

from __future__ import annotations

import json
import sys

from testutil import ROOT

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import guard  # noqa: E402


def row(provider: str, ms: float, mem: float = 100.0, *, op: str = "ce_mse", mode: str = "full",
        shape: str = "N=8,H=4,V=16", status: str = "ok", date: str = "2026-01-01T00:00:00Z") -> dict:  # fmt: skip
    return {"op": op, "provider": provider, "mode": mode, "shape": shape, "dtype": "float32", "device": "cpu",
            "commit": "abc", "date": date, "ms_median": str(ms), "peak_mem_mb": str(mem), "status": status,
            "note": "boom" if status != "ok" else ""}  # fmt: skip


def test_ratios_are_reference_over_provider() -> None:
    rows = [row("torch", 10.0, 400.0), row("op_torch", 20.0, 100.0)]
    (q,) = guard.compute_ratios(rows)
    assert (q.provider, q.speed, q.memory) == ("op_torch", 0.5, 4.0)


def test_ratios_pair_within_one_run_and_shape() -> None:
    rows = [row("torch", 10.0, shape="a"), row("cpp", 5.0, shape="b"), row("cpp", 5.0, shape="a", date="other")]
    assert guard.compute_ratios(rows) == []  # no reference of the same shape and date


def test_floor_broken_names_op_provider_and_shape() -> None:
    base = {"ce_mse": {"op_torch": {"full": {"speed": 0.6, "memory": 3.0}}}}
    rows = [row("torch", 10.0, 400.0), row("op_torch", 20.0, 100.0)]
    fails, report = guard.check(rows, base)
    assert len(fails) == 1
    assert "ce_mse op_torch full N=8,H=4,V=16" in fails[0] and "speed ratio 0.500" in fails[0]
    assert any(line.strip().startswith("ok") and "memory ratio 4.000" in line for line in report)


def test_per_shape_floor_overrides_and_plain_number() -> None:
    base = {"ce_mse": {"op_torch": {"full": {"speed": 0.9, "shapes": {"N=8,H=4,V=16": {"speed": 0.4}}}},
                       "cpp": {"forward": 1.5}}}  # fmt: skip
    assert guard.floors_for(base, "ce_mse", "op_torch", "full", "N=8,H=4,V=16") == {"speed": 0.4}
    assert guard.floors_for(base, "ce_mse", "op_torch", "full", "other") == {"speed": 0.9}
    assert guard.floors_for(base, "ce_mse", "cpp", "forward", "x") == {"speed": 1.5}
    assert guard.floors_for(base, "ce_mse", "torch_lce", "full", "x") == {}
    del base["ce_mse"]["cpp"]
    fails, _ = guard.check([row("torch", 10.0), row("op_torch", 20.0)], base)
    assert fails == []  # 0.5 >= the shape's floor 0.4, though below the mode's 0.9


def test_missing_or_errored_guarded_provider_fails_absent_op_does_not() -> None:
    base = {"ce_mse": {"cpp": {"full": {"speed": 1.0}}}, "patch_pool": {"cpp": {"full": {"speed": 1.0}}}}
    fails, report = guard.check([row("torch", 10.0)], base)
    assert fails == ["ce_mse cpp full: guarded but no rows"]
    assert any("not run  patch_pool" in line for line in report)
    fails, _ = guard.check([row("torch", 10.0), row("cpp", 1.0, status="error")], base)
    assert len(fails) == 1 and "errored: boom" in fails[0]


def test_step_reference_is_kernels_off() -> None:
    rows = [row("kernels_off", 30.0, op="step"), row("kernels_on", 20.0, op="step")]
    (q,) = guard.compute_ratios(rows)
    assert q.provider == "kernels_on" and q.speed == 1.5


def test_propose_takes_worst_run_with_margin() -> None:
    runs = [[row("torch", 10.0, 400.0, date=d), row("op_torch", ms, 100.0, date=d)]
            for d, ms in (("d1", 10.0), ("d2", 12.5))]  # fmt: skip
    out = guard.propose(runs, margin=0.2)
    assert out == {"ce_mse": {"op_torch": {"full": {"speed": 0.64, "memory": 3.2}}}}


def test_committed_baselines_parse_and_name_known_providers() -> None:
    with open(guard.BASELINES) as f:
        data = json.load(f)
    known = {"torch", "compile", "op_torch", "cpp", "triton", "cuda", "liger", "cce", "torch_lce", "kernels_on"}
    for device, ops in data.items():
        if device.startswith("_"):
            continue
        for op, providers in ops.items():
            if op.startswith("_"):
                continue
            for provider, modes in providers.items():
                assert provider.startswith("_") or provider in known, (device, op, provider)
                for mode in modes:
                    assert mode.startswith("_") or mode in ("forward", "backward", "full"), (device, op, mode)


def test_main_exit_codes(tmp_path, capsys) -> None:
    from benchmarks import common

    csv_path, base_path = str(tmp_path / "r.csv"), tmp_path / "b.json"
    common.append_rows([row("torch", 10.0, 400.0), row("op_torch", 20.0, 100.0)], csv_path)
    args = ["--csv", csv_path, "--baselines", str(base_path), "--device", "cpu"]
    base_path.write_text(json.dumps({"cpu": {"ce_mse": {"op_torch": {"full": {"speed": 0.4}}}}}))
    assert guard.main(args) == 0 and "every floor met" in capsys.readouterr().out
    base_path.write_text(json.dumps({"cpu": {"ce_mse": {"op_torch": {"full": {"speed": 0.6}}}}}))
    assert guard.main(args) == 1
    assert "ce_mse op_torch full N=8,H=4,V=16" in capsys.readouterr().out  # names op, provider, mode, shape
    base_path.write_text(json.dumps({"h100": {}}))
    assert guard.main(args) == 2  # no baseline for this device class: nothing guarded, not a pass
    assert guard.main(["--csv", csv_path, "--baselines", str(base_path), "--device", "h200"]) == 2  # no rows
