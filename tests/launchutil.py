"""Real `deepspeed` launches of `mage_fast.train` for the tests (CPU, gloo): the tiny model's
overrides, free master ports, the command line and a launch run to its end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile

from testutil import DS_PORTS, ROOT

from mage_fast.train.checkpoint import MARKER

TINY = [
    "model.vision.image_size=48", "model.vision.patch_size=16", "model.vision.hidden_size=32",
    "model.vision.intermediate_size=64", "model.vision.num_layers=2", "model.vision.num_heads=2",
    "model.aligner.num_heads=2", "model.aligner.mlp_ratio=1.0", "model.llm.hidden_size=32",
    "model.llm.intermediate_size=64", "model.llm.num_layers=1", "model.llm.num_heads=2",
    "model.llm.num_kv_heads=2", "micro_batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
    "log_every=1", "data.train=stage1.json", "data.eval=eval.json",
]  # fmt: skip


def free_port() -> int:
    """A free port for a launch's master, recorded so its /dev/shm buffers are removed after the test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    DS_PORTS.append(port)
    return port


def launch_env(env: dict | None = None) -> dict:
    """This environment plus `env` (tests/conftest.py has put the venv's `bin/` first on PATH, so
    `deepspeed` and `ninja` are the venv's)."""
    return {**os.environ, **(env or {})}


def launch_cmd(args: list[str], env: dict | None = None, ranks: int = 2) -> tuple[list[str], dict]:
    """The `deepspeed --num_gpus <ranks> --module mage_fast.train` command line and its environment."""
    port = str(free_port())
    cmd = ["deepspeed", "--num_gpus", str(ranks), "--master_port", port, "--module", "mage_fast.train", *args]
    return cmd, launch_env(env)


def launch(
    args: list[str], timeout: int = 420, env: dict | None = None, check: bool = True, ranks: int = 2
) -> subprocess.CompletedProcess:
    """Run `ranks` ranks to the end (a hang fails by `timeout`); with check, a non-zero exit fails the test."""
    cmd, full = launch_cmd(args, env, ranks)
    p = subprocess.run(cmd, cwd=ROOT, env=full, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        print(p.stdout[-5000:], p.stderr[-5000:])
    assert not check or p.returncode == 0, f"{ranks}-rank launch failed ({p.returncode}): {p.stderr[-1500:]}"
    return p


def launch_nodes(
    args_per_node: list[list[str]], hostfile, env: dict | None = None, timeout: int = 420
) -> list[tuple[int, str]]:
    """Loopback "machines" of one rank each, as on a cluster without ssh between launches:
    `deepspeed --hostfile H --no_ssh --node_rank R --master_addr 127.0.0.1`, one launch per node
    with its own arguments, run together to their end. Returns (exit status, output) per node."""
    with open(hostfile, "w") as f:
        f.writelines(f"node{r} slots=1\n" for r in range(len(args_per_node)))
    port = str(free_port())
    base = ["deepspeed", "--hostfile", str(hostfile), "--no_ssh", "--master_addr", "127.0.0.1", "--master_port", port]
    logs = [tempfile.TemporaryFile("w+") for _ in args_per_node]  # files: no pipe to fill
    procs = [
        subprocess.Popen(
            [*base, "--node_rank", str(r), "--module", "mage_fast.train", *args],
            cwd=ROOT,
            env=launch_env(env),
            stdout=logs[r],
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a hung launch is killed with its ranks
        )
        for r, args in enumerate(args_per_node)
    ]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=60)
    out = []
    for code, log in zip(codes, logs):
        log.seek(0)
        out.append((code, log.read()))
        log.close()
    return out


STRICT_ZERO3 = os.path.join(ROOT, "configs/deepspeed/zero3_strict.json")


def run_history(run: str) -> list[dict]:
    """Step records of run_dir/history.jsonl (all launches appended), in file order; [] if absent."""
    path = os.path.join(run, "history.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "step" in r]


def run_summary(run: str) -> dict:
    """run_dir/summary.json of the run's last launch."""
    with open(os.path.join(run, "summary.json")) as f:
        return json.load(f)


def history_by_step(run: str) -> dict[int, dict]:
    """run_history keyed by step (a later launch's record of a step replaces an earlier one)."""
    return {h["step"]: h for h in run_history(run)}


def copy_checkpoints(src: str, dst: str, tags: list[str], uncommitted: str | None = None) -> str:
    """A run_dir `dst` holding checkpoints `tags` of run `src`, and `uncommitted` without its marker
    (what a kill while saving leaves: DeepSpeed's files, no COMMITTED)."""
    for tag in [*tags, *([uncommitted] if uncommitted else [])]:
        shutil.copytree(os.path.join(src, "checkpoints", tag), os.path.join(dst, "checkpoints", tag))
    if uncommitted:
        os.remove(os.path.join(dst, "checkpoints", uncommitted, MARKER))
    return dst


def assert_same_steps(got: dict[int, dict], want: dict[int, dict], steps: list[int], rel: float = 0.0) -> None:
    """`got` has exactly `steps`, each one's loss, ce, mse and grad_norm within `rel` of `want`'s
    (0: bit-equal)."""
    assert sorted(got) == steps
    for s in steps:
        for key in ("loss", "ce", "mse", "grad_norm"):
            a, b = got[s][key], want[s][key]
            assert abs(a - b) <= rel * max(abs(a), abs(b)), f"step {s} {key}: {a} vs {b}"


def assert_losses_fall(h: dict[int, dict], steps: int, label: str) -> None:
    """`h` (history_by_step) holds steps 1..`steps`, the last loss under the first and the second
    half's lowest under the first half's: a run that learns, not one step's noise."""
    losses = [h[s]["loss"] for s in sorted(h)]
    print(f"{label} losses:", losses)
    half = steps // 2
    assert sorted(h) == list(range(1, steps + 1)) and losses[-1] < losses[0]
    assert min(losses[half:]) < min(losses[:half])


def resume_killed_mid_save(ref: str, run: str, args: list[str], steps: list[int]) -> None:
    """Run `ref`'s launch again (`args`, without run_dir) in run_dir `run` holding ref's step-2
    checkpoint and its step-4 one as a kill while saving leaves it: the launch removes step 4,
    resumes from step 2 and repeats ref's `steps` bit for bit (weights, optimizer, LR, data position)."""
    copy_checkpoints(ref, run, ["step00000002"], uncommitted="step00000004")
    p = launch([f"run_dir={run}", *args])
    assert "removed incomplete checkpoint step00000004" in p.stdout and "resumed from step00000002" in p.stdout
    assert_same_steps(history_by_step(run), history_by_step(ref), steps)


def resume_on_one_rank(ref: str, run: str, args: list[str], tag: str, steps: list[int]) -> dict[int, dict]:
    """`ref`'s checkpoint `tag` (written by 2 ranks) resumed by 1 rank with `args` (without run_dir;
    the same samples per step) in run_dir `run`: the resize is logged and ref's `steps` repeat within
    fp32 rounding (the sums over ranks run in another order). Returns the resumed history."""
    copy_checkpoints(ref, run, [tag])
    p = launch([f"run_dir={run}", *args], ranks=1)
    assert f"resize: {tag} was written by 2 ranks, this run has 1" in p.stdout
    got, want = history_by_step(run), history_by_step(ref)
    print("2 -> 1 rank:", [(got[s]["loss"], want[s]["loss"]) for s in steps])
    assert_same_steps(got, want, steps, rel=2e-5)
    return got


def assert_only_trainable_state(run: str) -> None:
    """A run with a frozen base (LoRA, QLoRA): under a fifth of the parameters train, and the
    optimizer holds fp32 master weights and two AdamW moments (12 bytes) per trainable parameter,
    plus a few step counters, and nothing for the frozen ones."""
    s = run_summary(run)
    n, state = s["params"], s["optimizer_state_bytes"]
    print(f"params {n}, optimizer state {state} B")
    assert n["trainable"] < n["total"] / 5
    assert 12 * n["trainable"] <= state <= 12 * n["trainable"] + 4096
