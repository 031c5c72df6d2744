"""What a run survives, real 2-rank ZeRO-3 (and ZeRO-2) runs on CPU (gloo): SIGKILL mid-save and
at a random step, then resume with the uninterrupted run's losses; damaged checkpoint files
(truncated, bit-flipped) found offline and by resume, which falls back; SIGTERM to the launch and
SIGUSR1 to one rank (every rank commits its step and exits 75). Each subprocess has a timeout, so
a hang fails instead of blocking. What a run refuses or skips: test_train_bad_inputs.py.

Fault injection (the test-only `faults:` config section, docs/survival.md): faults.kill_in_save=N
(every rank SIGKILLs itself while saving step N, before the COMMITTED marker),
faults.pause_after=STEP with faults.pause_s=SECONDS (the ranks wait after STEP, so a signal lands
at a known step).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
from launchutil import TINY, launch, launch_cmd, run_history, run_summary
from testutil import ROOT

from mage_fast.train.checkpoint import complete_tags, tag_of

NO_EVAL = ["data.eval=null", "export=false", "deterministic=true"]


def _common(run: str, data: str, ds: str) -> list[str]:
    return [f"run_dir={run}", f"data.root={data}", f"deepspeed={ds}", *TINY, *NO_EVAL]


def _complete(run: str) -> list[str]:
    return complete_tags(run)


# ---- 1 + 2: kill (also mid-save) and resume: the resumed losses equal the uninterrupted run's ----

STEPS = ["max_steps=8", "save_every=2"]


@pytest.fixture(scope="module")
def ref3(shapes_dir, strict_zero3, tmp_path_factory) -> tuple[str, dict[int, dict]]:
    """An uninterrupted 8-step ZeRO-3 run saving at 2, 4, 6, 8 (the last 3 kept); its steps by number."""
    ref = str(tmp_path_factory.mktemp("ref3") / "ref")
    launch(_common(ref, shapes_dir, strict_zero3) + STEPS + ["keep_last=3"])
    want = {h["step"]: h for h in run_summary(ref)["history"]}
    assert sorted(want) == list(range(1, 9))
    return ref, want


def _start(args: list[str], log_path) -> tuple[subprocess.Popen, object]:
    """A 2-rank launch in its own process group, its output to a file (a full pipe would block the ranks)."""
    cmd, full = launch_cmd(args)
    log = open(log_path, "w+")  # noqa: SIM115  (closed by _end)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait_for_step(proc: subprocess.Popen, run: str, step: int, before: int, log_path, timeout: float = 300) -> None:
    """Until this launch (history records after the first `before`) has logged `step`."""
    deadline = time.time() + timeout
    while not any(h["step"] >= step for h in run_history(run)[before:]):
        assert proc.poll() is None, f"run ended before step {step}: {log_path.read_text()[-2000:]}"
        assert time.time() < deadline, "no progress"
        time.sleep(0.2)


def _end(proc: subprocess.Popen, log, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()


def _same_losses(got: list[dict], want: dict[int, dict]) -> None:
    for h in got:
        w = want[h["step"]]
        assert (h["loss"], h["ce"], h["mse"]) == (w["loss"], w["ce"], w["mse"]), f"step {h['step']}: {h} != {w}"


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted(shapes_dir, strict_zero3, tmp_path, ref3):
    _, want = ref3
    run = str(tmp_path / "run")

    # (a) SIGKILL of every rank while step 4 is being saved: DeepSpeed's files are there, no marker.
    args = _common(run, shapes_dir, strict_zero3) + STEPS + ["keep_last=2"]
    p = launch([*args, "faults.kill_in_save=4"], check=False)
    assert p.returncode != 0
    assert os.path.isdir(os.path.join(run, "checkpoints", "step00000004"))
    assert _complete(run) == ["step00000002"]

    # (b) resume (from step 2, removing the partial step 4), then SIGKILL the whole launch at a random step.
    kill_at = random.Random().randint(4, 7)
    print(f"killing the resumed run after step {kill_at}")
    before = len(run_history(run))
    proc, log = _start(args, tmp_path / "killed.log")
    try:
        _wait_for_step(proc, run, kill_at, before, tmp_path / "killed.log")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _end(proc, log)
    out = (tmp_path / "killed.log").read_text()
    assert "resumed from step00000002" in out and "removed incomplete checkpoint step00000004" in out
    resumed = _complete(run)[-1]

    # (c) resume to the end: every step after the resume point equals the uninterrupted run.
    p = launch(args)
    assert f"resumed from {resumed}" in p.stdout
    got = run_summary(run)["history"]
    assert [h["step"] for h in got] == list(range(int(resumed[4:]) + 1, 9))
    _same_losses(got + run_history(run)[before:], want)  # also the steps the killed run got through
    assert _complete(run) == ["step00000006", "step00000008"]  # keep_last=2


# ---- 9 + 10: damaged checkpoint files, and pre-emption signals ----

OPTIM0 = "zero_pp_rank_0_mp_rank_00_optim_states.pt"  # rank 0's file under ZeRO-2 and ZeRO-3
OPTIM1 = "zero_pp_rank_1_mp_rank_00_optim_states.pt"  # rank 1's


def _ranks(proc: subprocess.Popen) -> list:
    """The rank processes under a launch (psutil handles), rank 0 first."""
    import psutil

    procs = psutil.Process(proc.pid).children(recursive=True)
    found = [c for c in procs if "LOCAL_RANK" in c.environ() and "deepspeed.launcher" not in " ".join(c.cmdline())]
    return sorted(found, key=lambda c: int(c.environ()["RANK"]))


def _signal_until_exit(ranks: list, sig: int, timeout: float = 120) -> None:
    """`sig` to every rank every 0.1 s until all have exited: the repeats land during the save."""
    import psutil

    deadline = time.time() + timeout
    while any(r.is_running() and r.status() != psutil.STATUS_ZOMBIE for r in ranks):
        assert time.time() < deadline, "ranks did not exit"
        for r in ranks:
            try:
                r.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)


def _truncate(path: str) -> None:
    """Half the file, as a full disk or an interrupted copy leaves it."""
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_bit(path: str) -> None:
    """One bit in the middle of the file, as storage bit-rot does: same size, other content."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def _verify(run: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mage_fast.train.verify", run], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_zero3_damaged_checkpoints_fall_back_and_sigterm_saves_the_current_step(
    shapes_dir, strict_zero3, tmp_path, ref3
):
    # The newest checkpoint truncated (rank 0's file) and the one before bit-flipped (rank 1's):
    # verify names both offline; resume falls back twice, to step 4, and trains the reference's steps.
    ref, want = ref3
    run = str(tmp_path / "run")
    shutil.copytree(os.path.join(ref, "checkpoints"), os.path.join(run, "checkpoints"))
    ck = os.path.join(run, "checkpoints")
    _truncate(os.path.join(ck, "step00000008", OPTIM0))
    _flip_bit(os.path.join(ck, "step00000006", OPTIM1))
    v = _verify(run)
    assert v.returncode == 1, v.stdout + v.stderr
    assert f"step00000008: DAMAGED: {OPTIM0} has" in v.stdout and "recorded" in v.stdout
    assert f"step00000006: DAMAGED: {OPTIM1} has another content than recorded" in v.stdout
    assert "step00000004: ok" in v.stdout

    # A SIGTERM to the whole launch (as a scheduler sends it) while the ranks wait after step 6
    # (faults.pause_after), then more to the ranks until they exit: every rank finishes its step, the checkpoint of that step is
    # committed (the repeated signals during the save do not break it), the ranks exit 75.
    args = _common(run, shapes_dir, strict_zero3) + STEPS + ["keep_last=3", "save_every=100"]
    proc, log = _start([*args, "faults.pause_after=6", "faults.pause_s=60"], tmp_path / "term.log")
    _wait_for_step(proc, run, 6, 0, tmp_path / "term.log")
    ranks = _ranks(proc)
    assert len(ranks) == 2
    os.killpg(proc.pid, signal.SIGTERM)
    _signal_until_exit(ranks, signal.SIGTERM)
    _end(proc, log)
    out = (tmp_path / "term.log").read_text()
    assert f"checkpoint step00000008 is damaged ({OPTIM0} has" in out
    assert f"checkpoint step00000006 is damaged ({OPTIM1} has another content" in out
    assert "resumed from step00000004" in out
    stopped = run_history(run)
    last = stopped[-1]["step"]
    assert "stopping on SIGTERM" in out and f"checkpoint {tag_of(last)} committed; exit 75" in out
    assert _complete(run)[-1] == tag_of(last) and 6 <= last < 8
    assert os.path.isdir(os.path.join(ck, "step00000008.damaged"))
    assert _verify(run).returncode == 0  # the damaged ones are set aside, the new one is intact

    # Resume loses no step: it continues right after the signalled step, with the reference's losses.
    p = launch(args)
    assert f"resumed from {tag_of(last)}" in p.stdout
    got = run_summary(run)["history"]
    assert [h["step"] for h in stopped + got] == list(range(5, 9))
    _same_losses(stopped + got, want)


@pytest.mark.slow
def test_zero2_sigusr1_on_one_rank_stops_all_and_damaged_checkpoints_fall_back(shapes_dir, tmp_path):
    # SIGUSR1 to rank 1 alone while the ranks wait after step 5 (rank 0 for 5 s): the flag joins the step's all-reduce, both ranks save the step and
    # exit 75, which the deepspeed launcher passes on. Then the newest two checkpoints are damaged
    # (truncated, bit-flipped): resume falls back to step 2 and repeats steps 3.. exactly.
    run, ds = str(tmp_path / "run"), os.path.join(ROOT, "configs/deepspeed/zero2.json")
    args = _common(run, shapes_dir, ds) + ["max_steps=8", "save_every=2", "keep_last=3"]
    proc, log = _start([*args, "faults.pause_after=5", "faults.pause_s=5"], tmp_path / "usr1.log")
    _wait_for_step(proc, run, 5, 0, tmp_path / "usr1.log")
    ranks = _ranks(proc)
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGUSR1)
    rc = _end(proc, log)
    out = (tmp_path / "usr1.log").read_text()
    first = run_history(run)
    last = first[-1]["step"]
    assert rc == 75, out[-3000:]
    assert "stopping on a signal on another rank" in out and 5 <= last < 8
    assert _complete(run) == ["step00000002", "step00000004", tag_of(last)]

    newest, older = tag_of(last), "step00000004"
    _truncate(os.path.join(run, "checkpoints", newest, OPTIM1))
    _flip_bit(os.path.join(run, "checkpoints", older, OPTIM0))
    p = launch(args)
    assert f"checkpoint {newest} is damaged ({OPTIM1} has" in p.stdout
    assert f"checkpoint {older} is damaged ({OPTIM0} has another content" in p.stdout
    assert "resumed from step00000002" in p.stdout
    got = run_summary(run)["history"]
    assert [h["step"] for h in got] == list(range(3, 9))
    _same_losses([h for h in got if h["step"] <= last], {h["step"]: h for h in first})


def test_prune_keeps_the_last_intact_checkpoint(tmp_path):
    from mage_fast.train import checkpoint

    run = str(tmp_path)
    for step in (2, 4):
        folder = os.path.join(checkpoint.ckpt_root(run), tag_of(step))
        os.makedirs(folder)
        with open(os.path.join(folder, OPTIM0), "wb") as f:
            f.write(os.urandom(64))
        files = {OPTIM0: checkpoint.file_record(os.path.join(folder, OPTIM0))}
        with open(os.path.join(folder, checkpoint.MARKER), "w") as f:
            json.dump({"step": step, "files": files}, f)
    _truncate(os.path.join(checkpoint.ckpt_root(run), tag_of(4), OPTIM0))
    checkpoint._prune(run, keep_last=1)
    assert _complete(run) == ["step00000002", "step00000004"]  # step 4 is damaged: step 2 stays
    assert checkpoint.check_files(os.path.join(checkpoint.ckpt_root(run), tag_of(2))) is None
    # With the damaged one gone and the last one bit-flipped, resume has nothing left: one clear error.
    os.remove(os.path.join(checkpoint.ckpt_root(run), tag_of(4), checkpoint.MARKER))
    _flip_bit(os.path.join(checkpoint.ckpt_root(run), tag_of(2), OPTIM0))
    with pytest.raises(checkpoint.ResumeError, match=f"no intact checkpoint .*step00000002: {OPTIM0} has another"):
        checkpoint.resume_tag(run, checkpoint.Storage())
    assert os.listdir(checkpoint.ckpt_root(run)) == ["step00000002.damaged"]
