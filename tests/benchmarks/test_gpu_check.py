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

import pytest
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


def test_report_lists_whole_training_steps_apart_from_the_ops(tmp_path) -> None:
    csv_path, checks, out = str(tmp_path / "rows.csv"), tmp_path / "checks.jsonl", tmp_path / "out"
    _rows(csv_path)
    base = {"op": "lora_step", "shape": "wide", "mode": "full", "device": "cpu", "commit": "c", "date": "d",
            "dtype": "bfloat16"}  # fmt: skip
    common.append_rows(
        [
            {**base, "provider": "qlora", "ms_median": 12.5, "peak_mem_mb": 900.0, "status": "ok",
             "note": "trainable 10 of 100 params; optimizer state 120 B"},
            {**base, "provider": "lora", "status": "error", "note": "child exited with 1"},
        ],
        csv_path,
    )  # fmt: skip
    checks.write_text("")
    assert gpu_winners.main(["--csv", csv_path, "--checks", str(checks), "--out", str(out), "--device", "cpu"]) == 0
    summary = (out / "summary.txt").read_text()
    print(summary)
    providers, steps = summary.split("whole training steps:")
    assert "lora_step" not in providers  # no op row of its own, no "x the fastest" against the ops
    assert "lora_step wide      qlora:      12.5 ms/step, peak 900.0 MiB, bfloat16; trainable 10 of 100" in steps
    assert "lora_step wide       lora: ERROR child exited with 1" in steps


def test_step_budgets_fit_one_device_command() -> None:
    env = {**os.environ, "DRY": "1", "REHEARSE": "0"}
    out = subprocess.run(["bash", ".ci/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    steps = re.findall(r"gpu-check: \[(\w+)\] \(device budget (\d+) s\)", out.stdout)
    print(out.stdout[-800:])
    names = [s for s, _ in steps]
    assert names == ["wheels", "build", "env", "validate", "sweep", "profile", "tests", "memcheck", "report"]
    total = sum(int(b) for _, b in steps)
    assert total < 9 * 60 and f"at most {total} s" in out.stdout
    # QLoRA runs in the time those leave unused, before the report (whose budget it keeps free)
    every = re.findall(r"gpu-check: \[(\w+)\] \(device budget", out.stdout)
    assert every == [*names[:-1], "qlora", "report"]
    assert "[qlora] (device budget: the time left, at least 90 s)" in out.stdout
    assert "bench_lora --device cuda" in out.stdout and "test_train_qlora_cuda.py" in out.stdout


def test_a_step_on_the_time_left_stays_inside_the_limit_or_is_skipped(tmp_path) -> None:
    """`step_left` (.ci/gpu_steps.sh) gets the device limit less the time spent and the reserve,
    and with less than its minimum left is skipped, which fails nothing."""
    script = tmp_path / "steps.sh"
    script.write_text(
        f"REHEARSE=0 DRY=0 WORK={tmp_path}/work OUT={tmp_path}/out DEVICE_LIMIT_S=30 ROOT={tmp_path}\n"
        f"source {ROOT}/.ci/gpu_steps.sh\nstart=$SECONDS\n"
        'step_left fits 10 5 100 "echo limit \\$STEP_LIMIT"\n'
        'step_left big 40 5 100 "echo ran"\n'
        "finish\n"
    )
    for d in ("work/logs", "out", "runs/profile"):
        (tmp_path / d).mkdir(parents=True)
    out = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True)
    print(out.stdout)
    assert out.returncode == 0, out.stderr
    limit = int((tmp_path / "work/logs/fits.log").read_text().split()[-1])
    assert 10 <= limit <= 30 - 5  # never past the device limit less the reserve
    assert not (tmp_path / "work/logs/big.log").exists() and "[big] skipped:" in out.stdout
    summary = (tmp_path / "out/summary.txt").read_text()
    assert "big: skipped (" in summary and "0 step(s) failed" in summary and "their sum 0 s" in summary


def test_bench_lora_refuses_cuda_rows_without_a_gpu(capsys) -> None:
    """gpu-check's qlora step asks bench_lora for `--device cuda` rows: where torch sees no GPU,
    one line says so and nothing runs."""
    from benchmarks import bench_lora

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the refusal is for machines without one")
    with pytest.raises(SystemExit) as e:
        bench_lora.main(["--device", "cuda", "--csv", ""])
    err = capsys.readouterr().err
    print(err)
    assert e.value.code == 2 and "--device cuda: torch" in err and "sees no CUDA device here" in err
