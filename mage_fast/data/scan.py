"""Start-up image check that scales: cheap, split over ranks and processes, cached per file.

Up front every image is checked for existence and structure only (`check_file`: PIL's `verify()`,
~0.04 ms, against ~3 ms to decode a 640x480 JPEG); the full decode happens
once, in the loader, where a file that still fails is replaced by a recorded, deterministic
other sample (`LlavaDataset.__getitem__`). The distinct paths are split over the ranks
(`rank::world` of the sorted list) and, per rank, over `workers` processes; the results are
gathered so every rank filters the rows the same way. Results are cached in a JSON file keyed by
path, size and mtime: a resume, or a second stage on the same images, checks only what changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

Result = tuple[str, str] | None  # (reason, detail) for a bad file, None for a good one
Gather = Callable[[object], list]  # all_gather of one picklable object over the ranks


def _ends_with_eoi(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read(2) == b"\xff\xd9"


def check_file(path: str) -> Result:
    """("missing_image" | "corrupt_image", detail) or None, decoding as little as it can.

    PNG: `verify()` reads every chunk to IEND and checks its CRC (a cut file fails). JPEG:
    `verify()` reads the header only, so the file must also end with the EOI marker; one that
    does not (cut, or with data appended after the image) is decoded in full to tell which.
    Other formats are decoded in full (rare in LLaVA-style data)."""
    if not os.path.isfile(path):
        return ("missing_image", f"no such file {path}")
    try:
        with Image.open(path) as img:
            fmt = img.format
            img.verify()
        if fmt == "PNG" or (fmt == "JPEG" and _ends_with_eoi(path)):
            return None
        with Image.open(path) as img:
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        return ("corrupt_image", f"{path}: {type(e).__name__}: {e}")
    return None


def _check_many(paths: Sequence[str]) -> list[Result]:
    return [check_file(p) for p in paths]


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_cache(path: str | None) -> dict:
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a damaged cache is only a slower start


def _write_cache(path: str, entries: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(entries, f)
    os.replace(path + ".tmp", path)


def _run(paths: list[str], workers: int) -> list[Result]:
    if workers <= 1 or len(paths) < 2 * workers:
        return _check_many(paths)
    chunks = [paths[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_check_many, chunks))
    out: list[Result] = [None] * len(paths)
    for i, part in enumerate(parts):
        out[i::workers] = part
    return out


def scan_images(
    paths: Sequence[str],
    *,
    rank: int = 0,
    world: int = 1,
    gather: Gather | None = None,
    workers: int = 0,
    cache: str | None = None,
) -> dict[str, Result]:
    """{path: None | (reason, detail)} for every distinct path. With world > 1 every rank must
    call it (one `gather`); rank 0 writes `cache`. Returns the same dict on every rank."""
    stamps = {p: _stamp(p) for p in sorted(set(paths))}
    known = _read_cache(cache)
    done = {p: known[p][1] for p in stamps if p in known and known[p][0] == stamps[p] and stamps[p] is not None}
    todo = [p for p in stamps if p not in done]
    mine = todo[rank::world]
    found = dict(zip(mine, _run(mine, workers)))
    if world > 1:
        if gather is None:
            raise ValueError("scan_images: world > 1 needs a gather function")
        for part in gather(found):
            found.update(part)
    results = {p: (tuple(r) if r else None) for p, r in {**done, **found}.items()}
    # Ranks that read the cache before and after rank 0 rewrote it split `todo` differently;
    # whatever fell between the splits is checked here.
    gap = [p for p in stamps if p not in results]
    results.update(zip(gap, _check_many(gap)))
    if cache and rank == 0 and todo:  # other calls' entries (the eval split's) stay
        known.update({p: [stamps[p], results[p]] for p in stamps if stamps[p] is not None})
        _write_cache(cache, known)
    return results
