"""The pieces of `make gpu-check` that decide what comes back: the float64 gate
(benchmarks/gpu_validate.py) passes a correct backend and fails a wrong one, the report writes the
files that $OUT may hold, and the step budgets fit one device command. The whole command runs in
CI as `make gpu-check REHEARSE=1` (.ci/run)."""

from __future__ import annotations

import csv
import importlib
import json
import os
import re
import subprocess

import torch

from benchmarks import common, gpu_validate, gpu_winners

ROOT = common.ROOT


def test_float64_gate_passes_the_torch_backend_and_fails_a_wrong_one() -> None:
    torch.manual_seed(0)
    dev = torch.device("cpu")
    case = gpu_validate.MAKERS["ce_mse"](gpu_validate.SIZES["smoke"]["ce_mse"], dev)
    good = gpu_validate.compare(case, "torch")
    print(good)
    assert [r["quantity"] for r in good] == ["loss_ce_mse", "grad_hidden", "grad_weight", "grad_img"]
    assert all(r["ok"] for r in good)
    right = case.call
    case.call = lambda *a, backend=None: right(*a, backend=backend) * (1.05 if backend else 1.0)
    bad = gpu_validate.compare(case, "torch")
    print(bad)
    assert not all(r["ok"] for r in bad)  # a 5 % error passes no 2x-the-reference's-error rule


def test_a_crashing_backend_is_recorded_failed(tmp_path) -> None:
    out = tmp_path / "checks.jsonl"
    rc = gpu_validate.main(
        ["--backend", "cuda", "--size", "smoke", "--device", "cpu", "--ops", "patch_pool", "--out", str(out)]
    )
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert rc == 1 and recs[-1]["passed"] is False and "unavailable" in recs[-1]["note"]
    assert importlib.import_module("mage_fast.ops.ce_mse_plan").CHUNK_BYTES == 64 * 2**20  # restored


def _rows(path: str) -> None:
    base = {"shape": "N=1", "dtype": "bfloat16", "device": "cpu", "commit": "c", "date": "d", "mode": "full"}
    rows = [
        {**base, "op": "patch_pool", "provider": p, "ms_median": ms, "status": "ok", "peak_mem_mb": 1.0}
        for p, ms in (("op_torch", 2.0), ("cpp", 1.0), ("triton", 0.5), ("liger", 0.1))
    ]
    common.append_rows(rows, path)


def test_report_writes_only_validated_winners(tmp_path) -> None:
    csv_path, checks, out = str(tmp_path / "rows.csv"), tmp_path / "checks.jsonl", tmp_path / "out"
    _rows(csv_path)
    recs = [{"op": "patch_pool", "backend": b, "device": "cpu", "size": "smoke", "passed": ok} for b, ok in
            (("torch", True), ("cpp", True), ("triton", False))]  # fmt: skip
    checks.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert gpu_winners.main(["--csv", csv_path, "--checks", str(checks), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(os.listdir(out)) == ["results.csv", "summary.txt", "validated.json"]
    # triton is fastest but failed its float64 check: cpp wins
    assert json.loads((out / "validated.json").read_text())["winners"]["patch_pool"]["cpu"] == "cpp"
    with open(out / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    summary = (out / "summary.txt").read_text()
    print(summary)
    assert "triton  smoke FAILED" in summary and "0.20x" not in summary and "5.00x the fastest" in summary


def test_step_budgets_fit_one_device_command() -> None:
    env = {**os.environ, "DRY": "1", "REHEARSE": "0"}
    out = subprocess.run(["bash", ".ci/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    steps = re.findall(r"gpu-check: \[(\w+)\] \(device budget (\d+) s\)", out.stdout)
    print(out.stdout[-800:])
    names = [s for s, _ in steps]
    assert names == ["wheels", "build", "env", "validate", "sweep", "profile", "tests", "memcheck", "report"]
    total = sum(int(b) for _, b in steps)
    assert total < 9 * 60 and f"at most {total} s" in out.stdout
