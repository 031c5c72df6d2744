"""What survives what: real 2-rank ZeRO-3 runs on CPU (gloo) that are killed, fed NaNs and bad
data, mixed text-only/image batches, resumed with the wrong config or world size, and started
from a stage-1 aligner. Each subprocess has a timeout, so a hang fails instead of blocking.

Fault injection (documented in the README): MAGE_FAST_KILL_IN_SAVE=N (every rank SIGKILLs itself
while saving step N, before the COMMITTED marker), MAGE_FAST_INJECT_NAN="2,4:grad" (NaN loss at
step 2, an Inf gradient at step 4, on the last rank only).
"""

# ruff: noqa: F811  (strict_zero3 is a fixture imported from test_train_zero3)
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
from test_train_zero3 import TINY, launch, launch_cmd, strict_zero3  # noqa: F401  (fixture)
from testutil import ROOT

from mage_fast.train.checkpoint import complete_tags, tag_of

sys.path.insert(0, os.path.join(ROOT, "tests", "data"))
from _data_helpers import qa, write_truncated  # noqa: E402

NO_EVAL = ["data.eval=null", "export=false", "deterministic=true"]


def _common(run: str, data: str, ds: str) -> list[str]:
    return [f"run_dir={run}", f"data.root={data}", f"deepspeed={ds}", *TINY, *NO_EVAL]


def _history(run: str) -> list[dict]:
    """Step records of run_dir/history.jsonl (all launches appended), in file order."""
    path = os.path.join(run, "history.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if "step" in r]


def _summary(run: str) -> dict:
    with open(os.path.join(run, "summary.json")) as f:
        return json.load(f)


def _single(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """One process (`python -m mage_fast.train`, a world of one) that is expected to fail."""
    return subprocess.run(
        [sys.executable, "-m", "mage_fast.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def _complete(run: str) -> list[str]:
    return complete_tags(run)


# ---- 1 + 2: kill (also mid-save) and resume: the resumed losses equal the uninterrupted run's ----

STEPS = ["max_steps=8", "save_every=2"]


@pytest.fixture(scope="module")
def ref3(shapes_dir, strict_zero3, tmp_path_factory) -> tuple[str, dict[int, dict]]:
    """An uninterrupted 8-step ZeRO-3 run saving at 2, 4, 6, 8 (the last 3 kept); its steps by number."""
    ref = str(tmp_path_factory.mktemp("ref3") / "ref")
    launch(_common(ref, shapes_dir, strict_zero3) + STEPS + ["keep_last=3"])
    want = {h["step"]: h for h in _summary(ref)["history"]}
    assert sorted(want) == list(range(1, 9))
    return ref, want


def _start(args: list[str], log_path, env: dict | None = None) -> tuple[subprocess.Popen, object]:
    """A 2-rank launch in its own process group, its output to a file (a full pipe would block the ranks)."""
    cmd, full = launch_cmd(args, env)
    log = open(log_path, "w+")  # noqa: SIM115  (closed by _end)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _wait_for_step(proc: subprocess.Popen, run: str, step: int, before: int, log_path, timeout: float = 300) -> None:
    """Until this launch (history records after the first `before`) has logged `step`."""
    deadline = time.time() + timeout
    while not any(h["step"] >= step for h in _history(run)[before:]):
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
    p = launch(args, env={"MAGE_FAST_KILL_IN_SAVE": "4"}, check=False)
    assert p.returncode != 0
    assert os.path.isdir(os.path.join(run, "checkpoints", "step00000004"))
    assert _complete(run) == ["step00000002"]

    # (b) resume (from step 2, removing the partial step 4), then SIGKILL the whole launch at a random step.
    kill_at = random.Random().randint(4, 7)
    print(f"killing the resumed run after step {kill_at}")
    before = len(_history(run))
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
    got = _summary(run)["history"]
    assert [h["step"] for h in got] == list(range(int(resumed[4:]) + 1, 9))
    _same_losses(got + _history(run)[before:], want)  # also the steps the killed run got through
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
    # (MAGE_FAST_PAUSE_AFTER), then more to the ranks until they exit: every rank finishes its step, the checkpoint of that step is
    # committed (the repeated signals during the save do not break it), the ranks exit 75.
    args = _common(run, shapes_dir, strict_zero3) + STEPS + ["keep_last=3", "save_every=100"]
    proc, log = _start(args, tmp_path / "term.log", env={"MAGE_FAST_PAUSE_AFTER": "6:60"})
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
    stopped = _history(run)
    last = stopped[-1]["step"]
    assert "stopping on SIGTERM" in out and f"checkpoint {tag_of(last)} committed; exit 75" in out
    assert _complete(run)[-1] == tag_of(last) and 6 <= last < 8
    assert os.path.isdir(os.path.join(ck, "step00000008.damaged"))
    assert _verify(run).returncode == 0  # the damaged ones are set aside, the new one is intact

    # Resume loses no step: it continues right after the signalled step, with the reference's losses.
    p = launch(args)
    assert f"resumed from {tag_of(last)}" in p.stdout
    got = _summary(run)["history"]
    assert [h["step"] for h in stopped + got] == list(range(5, 9))
    _same_losses(stopped + got, want)


@pytest.mark.slow
def test_zero2_sigusr1_on_one_rank_stops_all_and_damaged_checkpoints_fall_back(shapes_dir, tmp_path):
    # SIGUSR1 to rank 1 alone while the ranks wait after step 5 (rank 0 for 5 s): the flag joins the step's all-reduce, both ranks save the step and
    # exit 75, which the deepspeed launcher passes on. Then the newest two checkpoints are damaged
    # (truncated, bit-flipped): resume falls back to step 2 and repeats steps 3.. exactly.
    run, ds = str(tmp_path / "run"), os.path.join(ROOT, "configs/deepspeed/zero2.json")
    args = _common(run, shapes_dir, ds) + ["max_steps=8", "save_every=2", "keep_last=3"]
    proc, log = _start(args, tmp_path / "usr1.log", env={"MAGE_FAST_PAUSE_AFTER": "5:5"})
    _wait_for_step(proc, run, 5, 0, tmp_path / "usr1.log")
    ranks = _ranks(proc)
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGUSR1)
    rc = _end(proc, log)
    out = (tmp_path / "usr1.log").read_text()
    first = _history(run)
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
    got = _summary(run)["history"]
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
        checkpoint.resume_tag(run, 0, 1)
    assert os.listdir(checkpoint.ckpt_root(run)) == ["step00000002.damaged"]


# ---- 3: a NaN loss / Inf gradient on one rank skips the step on all; K in a row abort ----


@pytest.mark.slow
@pytest.mark.parametrize("stage", [3, 2])
def test_nonfinite_steps_are_skipped_on_all_ranks_then_abort(shapes_dir, strict_zero3, tmp_path, stage):
    # ZeRO-3 keeps the reduced gradients in one flat partition buffer; ZeRO-2 in per-parameter
    # slices (and clears every .grad): the norm and the forced skip must work on both.
    run = str(tmp_path / "run")
    ds = strict_zero3 if stage == 3 else os.path.join(ROOT, "configs/deepspeed/zero2.json")
    args = _common(run, shapes_dir, ds) + ["max_steps=8", "max_bad_steps=2"]
    p = launch(args, env={"MAGE_FAST_INJECT_NAN": "2,4:grad,5", "MAGE_FAST_INJECT_RANK": "1"}, check=False)
    assert p.returncode != 0
    assert "aborting: 2 non-finite steps in a row (steps 4-5, max_bad_steps=2)" in p.stderr
    h = {r["step"]: r for r in _history(run)}
    assert sorted(h) == [1, 2, 3, 4, 5]
    assert h[2]["skipped"] and h[2]["nonfinite"] == "loss" and len(h[2]["ids"]) == 8  # both ranks' samples
    assert h[4]["skipped"] and h[4]["nonfinite"] == "gradient norm"  # loss finite, rank 1's grads not
    assert "skipped" not in h[1] and "skipped" not in h[3]
    # AdamW's own step count (rank 0, whose loss was finite): no update on a skipped step.
    assert [h[s]["updates"] for s in range(1, 6)] == [1, 1, 2, 2, 2]
    assert "non-finite loss at step 2" in p.stdout and f"sample ids {h[2]['ids']}" in p.stdout
    assert all(h[s]["grad_norm"] > 0 for s in (1, 3))  # the real norm of the reduced gradients, not 0


# ---- 4 + 5 + 7 + 6: stage 1 -> stage 2 over bad data with mixed batches; mismatched resumes ----


def _bad_world(shapes_dir: str, root: str) -> dict[str, list[str]]:
    """shapes stage2 rows, half made text-only, plus one broken row per reason."""
    os.makedirs(root)
    for name in ("images", "tokenizer"):
        os.symlink(os.path.join(shapes_dir, name), os.path.join(root, name))
    with open(os.path.join(shapes_dir, "stage2.json")) as f:
        rows = json.load(f)[:36]
    for r in rows[::2]:  # text-only: no image, no placeholder
        del r["image"]
        r.pop("caption", None)
        r["conversations"][0]["value"] = r["conversations"][0]["value"].replace("<image>", "").strip()
    os.makedirs(os.path.join(root, "broken"))
    write_truncated(os.path.join(root, "broken", "half.png"), "PNG")
    write_truncated(os.path.join(root, "broken", "half.jpg"), "JPEG")
    img = rows[1]["image"]
    bad = {
        "missing_image": [qa("gone", "images/nope.png")],
        "corrupt_image": [qa("trunc_png", "broken/half.png"), qa("trunc_jpg", "broken/half.jpg")],
        "placeholder_mismatch": [qa("two_ph", img, q="<image> <image> what is this")],
        "over_length": [qa("too_long", img, q="<image>\n" + "what is this " * 200)],
        "no_labels": [{"id": "no_answer", "image": img, "conversations": [{"from": "human", "value": "<image>"}]}],
    }
    with open(os.path.join(root, "train.json"), "w") as f:
        json.dump(rows + [r for rs in bad.values() for r in rs], f)
    return {k: [r["id"] for r in rs] for k, rs in bad.items()}


@pytest.mark.slow
def test_stage2_from_stage1_aligner_over_bad_mixed_data(shapes_dir, strict_zero3, tmp_path):
    from safetensors.torch import load_file

    s1, s2, data = str(tmp_path / "s1"), str(tmp_path / "s2"), str(tmp_path / "data")
    launch(_common(s1, shapes_dir, strict_zero3) + ["max_steps=3", "export=true"])
    bad_ids = _bad_world(shapes_dir, data)

    # 7: the stage-1 aligner loaded into a ZeRO-3 stage-2 model (every parameter partitioned) and frozen
    # must come out of stage 2 bit for bit. 4: the bad rows are skipped and reported; 5: text-only and
    # image batches meet on the two ranks (strict ZeRO-3; the launch timeout turns a hang into a failure).
    p = launch(
        _common(s2, data, strict_zero3)
        + [
            "data.train=train.json",
            f"init_from={s1}/export",
            "freeze_aligner=true",
            "max_steps=6",
            "micro_batch_size=2",
            "export=true",
            "data.max_bad_fraction=0.5",
        ]
    )
    a1 = load_file(os.path.join(s1, "export", "aligner", "model.safetensors"))
    a2 = load_file(os.path.join(s2, "export", "aligner", "model.safetensors"))
    assert a1.keys() == a2.keys() and all(v.numel() > 0 for v in a1.values())
    for k in a1:
        assert a1[k].shape == a2[k].shape and bool((a1[k] == a2[k]).all()), k

    summ = _summary(s2)
    assert {r: v["ids"] for r, v in summ["data_skipped"].items()} == bad_ids
    for reason, ids in bad_ids.items():
        assert f"skipped {reason}: {len(ids)}, ids {ids}" in p.stdout
    per_rank = [h["images_per_rank"] for h in summ["history"]]
    assert any(min(x) == 0 < max(x) for x in per_rank), f"no step mixed a text-only and an image batch: {per_rank}"
    assert summ["step"] == 6 and summ["nonfinite_steps"] == 0

    # 4: past max_bad_fraction the run stops before training, naming the dominant reason.
    p = _single(
        _common(str(tmp_path / "s3"), data, strict_zero3) + ["data.train=train.json", "data.max_bad_fraction=0.1"]
    )
    assert p.returncode != 0
    assert "error: DataError:" in p.stderr and "most are corrupt_image: 2" in p.stderr and "train:" not in p.stderr

    # 6: resuming stage 1 with another model config fails before training, naming module and shapes ...
    n = len(_history(s1))
    p = _single(_common(s1, shapes_dir, strict_zero3) + ["max_steps=5", "model.llm.intermediate_size=48"])
    assert p.returncode != 0
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ResumeError: cannot resume") and "step00000003" in line
    assert "module llm.model.layers.0.mlp.down_proj" in line
    assert "shape (32, 64) in the checkpoint but shape (32, 48) in this model config" in line
    # ... and with another world size and resizing switched off says what to run.
    p = _single(_common(s1, shapes_dir, strict_zero3) + ["max_steps=5", "resume_resize=false"])
    assert p.returncode != 0
    line = p.stderr.strip().splitlines()[-1]
    assert "written by 2 ranks and this run has 1" in line and "deepspeed --num_gpus 2" in line
    assert "zero_to_fp32.py" in line and f"python -m mage_fast.train.convert {s1} --tag step00000003" in line
    assert len(_history(s1)) == n  # no step was taken
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


# ---- 8: the CLI rejects a bad key in one line ----


def test_cli_rejects_bad_config_in_one_line():
    cfg = os.path.join(ROOT, "configs", "train", "demo_stage1.yaml")
    for bad, msg in (
        ("bogus=1", "unknown config key bogus"),
        ("max_steps=lots", "max_steps: expected an integer"),
        ("freeze_llm=true", None),
        ("data.root=/nowhere", "data.train: '/nowhere/stage1.json' is not a file"),
    ):
        extra = ["optim.lr_llm=1e-4"] if bad.startswith("freeze_llm") else []
        p = subprocess.run(
            [sys.executable, "-m", "mage_fast.train", "--config", cfg, bad, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("config error: "), p.stderr
        assert msg is None or msg in lines[0]
        assert msg is not None or "contradicts optim.lr_llm" in lines[0]
