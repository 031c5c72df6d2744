"""README.md names only what exists: every module of a `python -m X` / `--module X` command
imports and answers `--help` (all of them in one subprocess), every `make T` target is a rule of
the Makefile, every path into the repository names a tracked file or folder (braces expanded,
globs matched; `<op>`-style placeholders and run outputs are not paths into the repository), and
none points outside it. The helpers are checked on a made-up README that breaks each rule."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

from testutil import ROOT

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_MODULE = re.compile(r"(?:\bpython3?|torchrun\b[^\n`]*?)\s+-m\s+([A-Za-z_][\w.]*)|--module\s+([A-Za-z_][\w.]*)")
_TARGET = re.compile(r"(?:^|[\s;&|(`])make\s+([a-z][\w-]*)")
_PATH = re.compile(r"(?<![\w/.-])((?:\.\./)*\.?[A-Za-z_][\w.-]*/[\w./{},*<>-]*)")
# Runs one module's command line with --help in this process; prints its exit status and whether it printed usage.
_HELP = """
import contextlib, io, json, runpy, sys
result = {}
for name in sys.argv[1:]:
    sys.argv, out, code = [name, "--help"], io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(name, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code = f"{type(e).__name__}: {e}"
    result[name] = [code, "usage:" in out.getvalue()]
print(json.dumps(result))
"""


def code_text(text: str) -> str:
    """Fenced blocks, indented blocks and inline `spans` of a markdown text, one per line."""
    parts = _FENCE.findall(text)
    prose = _FENCE.sub("", text)
    parts += [line for line in prose.splitlines() if line.startswith("    ") and line.strip()]
    parts += re.findall(r"`([^`\n]+)`", prose)
    return "\n".join(parts)


def modules(text: str) -> set[str]:
    return {a or b for a, b in _MODULE.findall(code_text(text))}


def targets(text: str) -> set[str]:
    return set(_TARGET.findall(code_text(text)))


def make_rules() -> set[str]:
    with open(os.path.join(ROOT, "Makefile")) as f:
        return set(re.findall(r"^([\w.-]+)\s*:(?!=)", f.read(), re.M))


def _expand(path: str) -> list[str]:
    """`a/{b,c}.py` -> `a/b.py`, `a/c.py` (nested and repeated braces too)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[: m.start()] + alt + path[m.end() :])]


def repo_paths(text: str) -> set[str]:
    """Paths into the repository (first component a tracked top-level entry) and any `../` path."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {line.split("/")[0] for line in tracked.splitlines()}
    found = set()
    for raw in _PATH.findall(text):
        path = raw.rstrip(".,;:")
        placeholder = "<" in path or re.fullmatch(r"[A-Z_]+(\.\w+)?", path.rsplit("/", 1)[-1])  # <op>.py, X.yaml
        if path.startswith("../") or (path.split("/")[0] in top and not placeholder):
            found.add(path)
    return found


def missing_paths(paths: set[str]) -> list[str]:
    bad = []
    for path in sorted(paths):
        if path.startswith("../"):
            bad.append(f"{path} (outside the repository)")
            continue
        for one in _expand(path):
            if not glob.glob(os.path.join(ROOT, one)):
                bad.append(path)
                break
    return bad


def help_answers(names: set[str]) -> dict[str, list]:
    """{module: [exit status of `--help`, printed usage]} for the modules of this repository, run in
    one subprocess; a module of another package is only looked up."""
    ours = sorted(n for n in names if n.split(".")[0] in ("mage_fast", "benchmarks"))
    out = {n: [0, importlib.util.find_spec(n) is not None] for n in names if n not in ours}
    p = subprocess.run([sys.executable, "-c", _HELP, *ours], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return {**out, **json.loads(p.stdout.strip().splitlines()[-1])}


def test_the_checks_catch_what_does_not_exist():
    fake = (
        "```bash\npython -m mage_fast.nope --x\ndeepspeed --module mage_fast.train\nmake nope\n```\n"
        "Run `make test`, see configs/train/{demo_stage1,nope}.yaml, `mage_fast/ops/<op>.py` and\n"
        "    ../shared/tool.sh   # a helper elsewhere\n"
    )
    assert modules(fake) == {"mage_fast.nope", "mage_fast.train"}
    assert targets(fake) - make_rules() == {"nope"}
    assert missing_paths(repo_paths(fake)) == [
        "../shared/tool.sh (outside the repository)",
        "configs/train/{demo_stage1,nope}.yaml",
    ]
    assert help_answers({"mage_fast.nope"})["mage_fast.nope"][0] != 0


def _readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_readme_make_targets_exist():
    found = targets(_readme())
    assert {"demo", "test", "bench-smoke"} <= found and not found - make_rules(), found - make_rules()


def test_readme_paths_exist():
    paths = repo_paths(_readme())
    assert len(paths) > 30 and not missing_paths(paths), missing_paths(paths)


def test_readme_modules_answer_help():
    names = modules(_readme())
    answers = help_answers(names)
    print(answers)
    assert {"mage_fast.train", "mage_fast.train.convert", "mage_fast.eval"} <= names
    assert not {n: a for n, a in answers.items() if a != [0, True]}
