"""Every Makefile command that runs a program of the venv (its python, deepspeed, ruff) has the
venv's bin/ first on PATH: DeepSpeed's CPU JIT ops are built by whichever `ninja` is first on
PATH, and torch rebuilds them whenever another ninja version than the last build's looks at them.
Checked on `make -n` (a dry run: the commands are printed, not run) of every phony target."""

from __future__ import annotations

import os
import re

from testutil import ROOT, make_dry_run

VENV_BIN = os.path.join(ROOT, ".venv", "bin")
STAMP = os.path.join(".venv", ".mage-fast-installed")
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def phony_targets() -> list[str]:
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    return [t for line in re.findall(r"^\.PHONY:(.*)$", text, re.M) for t in line.split()]


def dry_run(target: str, *variables: str) -> list[str]:
    """The shell lines `make -n [VAR=value ...] TARGET` prints (continuations joined); install's
    recipe included."""
    extra = ["-W", "setup.py"] if target == "install" else ["-o", STAMP]
    return make_dry_run(*extra, *variables, target)


def runs_venv_program(program: str) -> bool:
    venv = program.startswith((".venv/bin/", VENV_BIN + "/"))
    return venv or os.path.basename(program) == "deepspeed"


def unprefixed(line: str) -> list[str]:
    """The simple commands of a shell line that run a venv program without PATH=<venv>/bin:... set
    for them (an assignment in front, or an earlier `export PATH=<venv>/bin:...` on the line)."""
    exported, bad = False, []
    for part in re.split(r"&&|\|\||;|\|", line):
        words = part.split()
        while words and words[0] in ("@", "-", "env", "-u", "TRITON_INTERPRET", "export"):
            words.pop(0)
        assigns = []
        while words and _ASSIGN.match(words[0]):
            assigns.append(words.pop(0))
        has_path = any(a.startswith(f"PATH={VENV_BIN}:") for a in assigns)
        exported = exported or (has_path and part.split()[:1] == ["export"])
        if words and runs_venv_program(words[0]) and not (has_path or exported):
            bad.append(part.strip())
    return bad


def test_the_check_finds_a_command_without_the_prefix():
    ok = f"PATH={VENV_BIN}:$PATH .venv/bin/python -m a"
    assert unprefixed(ok) == [] and unprefixed(f"export PATH={VENV_BIN}:$PATH && deepspeed x") == []
    assert unprefixed(f"{ok} && .venv/bin/python -m b") == [".venv/bin/python -m b"]
    assert unprefixed("deepspeed --num_gpus 2 --module m") == ["deepspeed --num_gpus 2 --module m"]
    assert unprefixed("test -x .venv/bin/python || python3 -m venv .venv") == []


def test_every_target_runs_the_venv_with_its_bin_first_on_path():
    targets = phony_targets()
    assert {"install", "demo", "test", "bench", "bench-smoke", "demo-multi", "ablate"} <= set(targets)
    checked, bad = 0, {}
    for t in targets:
        for line in dry_run(t):
            checked += any(runs_venv_program(w) for w in line.split())
            if found := unprefixed(line):
                bad[t] = found
    print(f"{checked} lines run a venv program in {len(targets)} targets")
    assert checked >= 15 and not bad, bad


def test_port_reaches_every_launch():
    """`PORT=n` moves every launch of the demo targets off deepspeed's default rendezvous port, so a
    second demo can run on the same machine (two on 29500: EADDRINUSE)."""
    for target in ("demo", "demo-lora", "demo-tools"):
        launches = [line for line in dry_run(target, "PORT=29611") if "deepspeed --num_gpus" in line]
        assert launches and all("--master_port 29611" in line for line in launches), (target, launches)
