"""README.md and docs/*.md name only what exists: every module of a `python -m X` / `--module X`
command imports and answers `--help`, every `from mage_fast... import X` of their code imports (both
in one subprocess), every `make T` target is a rule of the Makefile, every path into the repository
names a tracked file or folder (braces expanded, globs matched; `<op>`-style placeholders and run
outputs are not paths into the repository), every relative markdown link names a file beside the
document (and a heading of it where it names one), and none points outside the repository. README
stays a landing page whose links reach every page of docs/, and docs/survival.md's `-k` names
select real tests. The helpers are checked on a made-up document that breaks each rule."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from testutil import ROOT

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_MODULE = re.compile(r"(?:\bpython3?|torchrun\b[^\n`]*?)\s+-m\s+([A-Za-z_][\w.]*)|--module\s+([A-Za-z_][\w.]*)")
_TARGET = re.compile(r"(?:^|[\s;&|(`])make\s+([a-z][\w-]*)")
_PATH = re.compile(r"(?<![\w/.-])((?:\.\./)*\.?[A-Za-z_][\w.-]*/[\w./{},*<>-]*)")
_LINK = re.compile(r"\]\(([^()\s#]+)(?:#[^()\s]*)?\)")
_ANCHOR = re.compile(r"\]\(([^()\s#]*\.md)?#([^()\s]+)\)")
_FROM = re.compile(r"^\s*from\s+((?:mage_fast|benchmarks)[\w.]*)\s+import\s+([\w, ]+)$", re.M)
# In one process: each "module" argument's command line with --help (its exit status and whether
# it printed usage), and each "module:name" argument imported (the failures).
_CHILD = """
import contextlib, importlib, io, json, runpy, sys
helps, bad = {}, []
for arg in sys.argv[1:]:
    if ":" in arg:
        module, name = arg.split(":")
        try:
            if not hasattr(importlib.import_module(module), name):
                importlib.import_module(module + "." + name)
        except Exception as e:
            bad.append(f"{arg}: {type(e).__name__}: {e}")
        continue
    sys.argv, out, code = [arg, "--help"], io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(arg, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    except BaseException as e:
        code = f"{type(e).__name__}: {e}"
    helps[arg] = [code, "usage:" in out.getvalue()]
print(json.dumps({"help": helps, "bad_imports": bad}))
"""


def code_text(text: str) -> str:
    """Fenced blocks, indented blocks and inline `spans` of a markdown text, one per line."""
    parts = _FENCE.findall(text)
    prose = _FENCE.sub("", text)
    parts += [line for line in prose.splitlines() if line.startswith("    ") and line.strip()]
    parts += re.findall(r"`([^`\n]+)`", prose)
    return "\n".join(parts)


def modules(text: str) -> set[str]:
    """Modules run with `python -m` / `--module`; a placeholder (`mage_fast.apps.NAME`,
    `mage_fast.apps.<program>`) is none."""
    found = {a or b for a, b in _MODULE.findall(code_text(text))}
    return {m for m in found if not m.endswith(".") and not re.fullmatch(r"[A-Z_]+", m.rsplit(".", 1)[-1])}


def code_imports(text: str) -> set[str]:
    """`module:name` of every `from mage_fast... import a, b` in a document's code."""
    return {f"{m}:{n.strip()}" for m, names in _FROM.findall(code_text(text)) for n in names.split(",") if n.strip()}


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
    """Paths written in prose or code, relative to the root: those into the repository (first
    component a tracked top-level entry) and any `../` path. Markdown link targets are relative to
    their document instead: `link_paths`."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {line.split("/")[0] for line in tracked.splitlines()}
    found = set()
    for raw in _PATH.findall(_LINK.sub("]()", text)):
        path = raw.rstrip(".,;:")
        placeholder = "<" in path or re.fullmatch(r"[A-Z_]+(\.\w+)?", path.rsplit("/", 1)[-1])  # <op>.py, X.yaml
        if path.startswith("../") or (path.split("/")[0] in top and not placeholder):
            found.add(path)
    return found


def _from_root(base: str, path: str) -> str:
    """`path`, written in folder `base`, relative to the root (starting with `../` when outside)."""
    return os.path.normpath(os.path.join(base, path)).replace(os.sep, "/")


def link_paths(text: str, base: str = "") -> set[str]:
    """Targets of the relative markdown links `[..](target)` / `![..](target)` of a document in
    folder `base`, relative to the root; web and mail links are not paths."""
    return {_from_root(base, t) for t in _LINK.findall(text) if not re.match(r"[a-z]+:", t)}


def slug(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def missing_anchors(text: str, doc: str) -> list[str]:
    """`file.md#part` / `#part` links of document `doc` (relative to the root) whose file has no
    heading with that anchor."""
    bad = []
    for target, part in _ANCHOR.findall(text):
        full = os.path.join(ROOT, _from_root(os.path.dirname(doc), target))
        body = text if not target else open(full).read() if os.path.isfile(full) else ""
        if part not in {slug(h) for h in re.findall(r"^#+ (.+)$", body, re.M)}:
            bad.append(f"{target}#{part}")
    return bad


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


def run_checks(names: set[str], pairs: set[str]) -> tuple[dict[str, list], list[str]]:
    """({module: [exit status of `--help`, printed usage]}, the `module:name` pairs that fail to
    import), all in one subprocess (importing our modules is most of this file's time); a module
    of another package is only looked up."""
    ours = sorted(n for n in names if n.split(".")[0] in ("mage_fast", "benchmarks"))
    out = {n: [0, importlib.util.find_spec(n) is not None] for n in names if n not in ours}
    cmd = [sys.executable, "-c", _CHILD, *ours, *sorted(pairs)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return {**out, **result["help"]}, result["bad_imports"]


def test_the_checks_catch_what_does_not_exist():
    fake = (
        "```bash\npython -m mage_fast.nope --x\ndeepspeed --module mage_fast.train\nmake nope\n```\n"
        "`python -m mage_fast.apps.NAME` or `python -m mage_fast.apps.<program>` runs a program\n"
        "Run `make test`, see configs/train/{demo_stage1,nope}.yaml, `mage_fast/ops/<op>.py` and\n"
        "    ../shared/tool.sh   # a helper elsewhere\n"
        "[ok](../Makefile), [gone](nope.md#part), ![up](../../x.png), [web](https://example.com/a/b)\n"
    )
    assert modules(fake) == {"mage_fast.nope", "mage_fast.train"}
    assert targets(fake) - make_rules() == {"nope"}
    assert missing_paths(repo_paths(fake)) == [
        "../shared/tool.sh (outside the repository)",
        "configs/train/{demo_stage1,nope}.yaml",
    ]
    assert missing_paths(link_paths(fake)) == [
        "../../x.png (outside the repository)",
        "../Makefile (outside the repository)",
        "nope.md",
    ]
    assert missing_paths(link_paths(fake, "docs")) == ["../x.png (outside the repository)", "docs/nope.md"]
    anchors = "[a](ops.md#backends-and-auto), [b](ops.md#nope), [c](#what-it-is), [d](#nope)\n## What it is\n"
    assert slug("Backends and `auto`") == "backends-and-auto"
    assert missing_anchors(anchors, "docs/x.md") == ["ops.md#nope", "#nope"]
    code = "```python\nfrom mage_fast.labels import IGNORE_INDEX, nope\nfrom mage_fast import labels\n```\n"
    assert code_imports(code) == {"mage_fast.labels:IGNORE_INDEX", "mage_fast.labels:nope", "mage_fast:labels"}
    answers, bad = run_checks({"mage_fast.nope"}, code_imports(code))
    assert answers["mage_fast.nope"][0] != 0
    assert [b.split(":")[:2] for b in bad] == [["mage_fast.labels", "nope"]]


DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _read(doc: str) -> str:
    with open(os.path.join(ROOT, doc)) as f:
        return f.read()


def test_readme_make_targets_exist():
    assert {"demo", "test", "bench-smoke"} <= targets(_read("README.md"))


@pytest.mark.parametrize("doc", DOCS)
def test_make_targets_exist(doc):
    found = targets(_read(doc))
    assert not found - make_rules(), found - make_rules()


def test_readme_is_a_landing_page():
    """The topics live in docs/, one file each; README keeps the commands and the tour."""
    text = _read("README.md")
    tour = {p for p in link_paths(text) if p.startswith("docs/") and p.endswith(".md")}
    assert len(text.splitlines()) < 300 and len(tour) >= 15, (len(text.splitlines()), sorted(tour))


def test_every_doc_is_reached_from_readme():
    """Following links from README reaches every page of docs/."""
    seen, todo = set(), ["README.md"]
    while todo:
        doc = todo.pop()
        seen.add(doc)
        found = link_paths(_read(doc), os.path.dirname(doc))
        todo += [p for p in found if p.endswith(".md") and p in DOCS and p not in seen]
    assert not set(DOCS) - seen, sorted(set(DOCS) - seen)


def test_survival_table_names_real_tests():
    """Each `-k NAME` of docs/survival.md's table selects a test of the two files it names."""
    text = _read("docs/survival.md")
    rows = [line.split("|")[-2] for line in text.splitlines() if line.startswith("| ") and "-k NAME" not in line]
    names = {n for cell in rows for n in re.findall(r"`([\w]+)`", cell)}
    tests = set()
    for f in ("tests/train/test_train_survival.py", "tests/train/test_train_bad_inputs.py"):
        assert f in text, f
        tests |= set(re.findall(r"^def (test_\w+)", _read(f), re.M))
    assert len(names) >= 6, names
    assert not {n for n in names if not any(n in t for t in tests)}, sorted(tests)


def test_readme_names_enough_paths():
    text = _read("README.md")
    assert len(repo_paths(text) | link_paths(text)) > 20


@pytest.mark.parametrize("doc", DOCS)
def test_paths_exist(doc):
    text = _read(doc)
    bad = missing_paths(repo_paths(text) | link_paths(text, os.path.dirname(doc))) + missing_anchors(text, doc)
    assert not bad, bad


@pytest.fixture(scope="module")
def checked() -> tuple[dict[str, set[str]], dict[str, list], list[str]]:
    """Each document's modules, and every module's --help answer and the failed code imports of
    all documents, from one subprocess."""
    names = {doc: modules(_read(doc)) for doc in DOCS}
    pairs = set().union(*(code_imports(_read(doc)) for doc in DOCS))
    assert len(pairs) >= 5, pairs
    return names, *run_checks(set().union(*names.values()), pairs)


def test_modules_answer_help(checked):
    names, answers, _ = checked
    print(answers)
    assert {"mage_fast.train", "mage_fast.apps.eval"} <= names["README.md"]
    bad = {f"{doc}: {n}": answers[n] for doc, found in names.items() for n in sorted(found) if answers[n] != [0, True]}
    assert not bad, bad


def test_code_imports_exist(checked):
    """Every `from mage_fast... import X` in the documents' code imports."""
    assert not checked[2], checked[2]
