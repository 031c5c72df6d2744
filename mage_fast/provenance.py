"""How a score was made, written into every scores JSON: the inputs and their hashes, the project
version, and (where a model answered) the template, image rule and decoding settings."""

from __future__ import annotations

import hashlib
import os
import subprocess
from typing import Any

import mage_fast

_CHUNK = 1 << 20


def sha256_file(path: str) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tree(root: str, suffixes: tuple[str, ...]) -> tuple[str, int]:
    """(hex sha256, file count) over the files under ``root`` whose names end with ``suffixes``:
    each file's path relative to ``root`` and its bytes' sha256, in sorted path order."""
    h, n = hashlib.sha256(), 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(suffixes):
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                h.update(f"{rel}\0{sha256_file(path)}\n".encode())
                n += 1
    return h.hexdigest(), n


def input_record(path: str, suffixes: tuple[str, ...] = (".txt", ".json", ".jsonl", ".tsv")) -> dict[str, Any]:
    """Path and sha256 of an input file; for a folder, the hash of its text files (``suffixes``),
    the images left out (their names are in the question files)."""
    if os.path.isdir(path):
        digest, n = sha256_tree(path, suffixes)
        return {"path": os.path.abspath(path), "sha256": digest, "hashed": f"{n} files ending {list(suffixes)}"}
    return {"path": os.path.abspath(path), "sha256": sha256_file(path)}


def project_version() -> dict[str, Any]:
    """mage_fast's version, and the git commit of its checkout when it runs from one (None else)."""
    src = os.path.dirname(os.path.abspath(mage_fast.__file__))
    try:
        out = subprocess.run(["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"mage_fast": mage_fast.__version__, "git_commit": commit}
