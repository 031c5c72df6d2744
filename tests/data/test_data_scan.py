"""The start-up image check: structure only where that is enough, cached by path, size and mtime."""

from __future__ import annotations

import os

from _data_helpers import write_png, write_truncated
from PIL import Image

from mage_fast.data import scan


def test_check_file_finds_cut_and_missing_files_and_keeps_good_ones(tmp_path):
    good_png = write_png(str(tmp_path / "ok.png"))
    good_jpg = str(tmp_path / "ok.jpg")
    Image.open(good_png).convert("RGB").save(good_jpg, "JPEG")
    tail = str(tmp_path / "tail.jpg")  # bytes after the EOI marker: decodes fine, checked in full
    with open(tail, "wb") as f:
        f.write(open(good_jpg, "rb").read() + b"appended")
    assert [scan.check_file(p) for p in (good_png, good_jpg, tail)] == [None, None, None]
    for fmt in ("PNG", "JPEG"):
        bad = write_truncated(str(tmp_path / f"cut.{fmt.lower()}"), fmt)
        reason, detail = scan.check_file(bad)
        assert reason == "corrupt_image" and bad in detail
    assert scan.check_file(str(tmp_path / "nope.png"))[0] == "missing_image"
    text = tmp_path / "text.png"
    text.write_text("not an image")
    assert scan.check_file(str(text))[0] == "corrupt_image"


def test_scan_caches_by_path_size_and_mtime(tmp_path, monkeypatch):
    paths = [write_png(str(tmp_path / f"{i}.png"), seed=i) for i in range(4)]
    cut = write_truncated(str(tmp_path / "cut.png"), "PNG")
    cache = str(tmp_path / "run" / "image_check.json")
    checked: list[str] = []
    real = scan._check_many
    monkeypatch.setattr(scan, "_check_many", lambda ps: (checked.extend(ps), real(ps))[1])
    first = scan.scan_images([*paths, cut, paths[0]], cache=cache)
    assert sorted(checked) == sorted([*paths, cut]) and os.path.isfile(cache)
    assert first[cut][0] == "corrupt_image" and all(first[p] is None for p in paths)
    checked.clear()
    assert scan.scan_images([*paths, cut], cache=cache) == first and checked == []  # a resume: nothing re-read
    write_png(paths[1], size=20, seed=9)  # changed: size and mtime differ
    os.utime(paths[2], ns=(1, 1))  # touched: mtime differs
    assert scan.scan_images([*paths, cut], cache=cache) == first and sorted(checked) == sorted(paths[1:3])


def test_scan_splits_paths_over_ranks_and_gathers(tmp_path):
    paths = [write_png(str(tmp_path / f"{i}.png"), seed=i) for i in range(5)]
    parts = {}

    def gather_for(rank):
        def gather(found):
            parts[rank] = dict(found)
            return [parts.get(0, {}), parts.get(1, {})]

        return gather

    scan.scan_images(paths, rank=1, world=2, gather=gather_for(1))
    both = scan.scan_images(paths, rank=0, world=2, gather=gather_for(0))
    assert sorted(parts[0]) == sorted(paths)[0::2] and sorted(parts[1]) == sorted(paths)[1::2]
    assert sorted(both) == sorted(paths) and all(v is None for v in both.values())
