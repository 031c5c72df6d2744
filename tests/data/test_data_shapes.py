"""The built-in shapes world: deterministic by seed, every split and question type, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from testutil import ROOT

from mage_fast.shapes.scenes import generate


def _digest(root: str) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    out = {}
    for d, _, files in os.walk(root):
        for name in files:
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _splits(out: str) -> dict[str, list[dict]]:
    """The world's rows by split: stage1, stage2, eval."""
    return {s: json.load(open(os.path.join(out, f"{s}.json"))) for s in ("stage1", "stage2", "eval")}


def _objects(cap: str) -> list[tuple[str, str, str]]:
    """(colour, shape, place) of every object a caption names."""
    out = []
    for part in cap.rstrip(" .").split(" , "):
        what, place = part.removeprefix("a ").split(" at ")
        colour, shape = what.split(" ")
        out.append((colour, shape, place))
    return out


def _plain_and_variant(tmp_path, **flag: bool) -> tuple[dict, dict]:
    """Rows of the seed-3 world plain and with `flag`; asserts both draw the same images."""
    plain, variant = str(tmp_path / "plain"), str(tmp_path / "variant")
    generate(plain, n=40, seed=3)
    generate(variant, n=40, seed=3, **flag)
    assert _digest(os.path.join(plain, "images")) == _digest(os.path.join(variant, "images"))  # the same world
    return _splits(plain), _splits(variant)


def test_same_seed_same_world_other_seed_other_world(tmp_path) -> None:
    a, b, c = (str(tmp_path / x) for x in "abc")
    generate(a, n=40, seed=3)
    generate(b, n=40, seed=3)
    generate(c, n=40, seed=4)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db  # PNGs, JSON splits and tokenizer, byte for byte
    assert {"stage1.json", "stage2.json", "eval.json", "tokenizer/tokenizer.json"} <= set(da)
    assert da["stage2.json"] != dc["stage2.json"] and da["images/00000.png"] != dc["images/00000.png"]


def test_splits_and_question_types(tmp_path) -> None:
    out = str(tmp_path / "w")
    generate(out, n=40, seed=0)
    rows = _splits(out)
    train_imgs = {r["image"] for r in rows["stage1"]}
    eval_imgs = {r["image"] for r in rows["eval"]}
    assert eval_imgs and not train_imgs & eval_imgs  # held-out images
    assert {r["qtype"] for r in rows["eval"]} == {"colour", "shape", "position", "count"}
    for r in rows["stage1"]:  # captions: the answer is the caption, which also feeds the MSE term
        assert r["conversations"][1]["value"] == r["caption"] and "<image>" in r["conversations"][0]["value"]
    for r in rows["eval"]:
        assert os.path.isfile(os.path.join(out, r["image"])) and r["conversations"][1]["value"]


def test_places_add_a_position_first_row_per_training_image(tmp_path) -> None:
    plain, more = _plain_and_variant(tmp_path, with_places=True)
    assert plain["eval"] == more["eval"]
    added = [r for r in more["stage1"] if r["qtype"] == "places"]
    assert [r for r in more["stage1"] if r["qtype"] != "places"] == plain["stage1"]
    assert len(added) == len(plain["stage1"]) and {r["qtype"] for r in more["stage2"]} >= {"places"}
    for cap_row, row in zip(plain["stage1"], added):
        # every object of the caption, named after its cell; the caption stays the MSE target
        objs = _objects(cap_row["caption"])
        want = {f"at {pos} is a {colour} {shape}" for colour, shape, pos in objs}
        assert set(row["conversations"][1]["value"].rstrip(" .").split(" , ")) == want
        assert row["image"] == cap_row["image"] and row["caption"] == cap_row["caption"]


def test_cli_writes_the_world(tmp_path) -> None:
    out = str(tmp_path / "cli")
    p = subprocess.run([sys.executable, "-m", "mage_fast.shapes.scenes", "--out", out, "--n", "20", "--seed", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert os.path.isfile(os.path.join(out, "world.json")) and os.path.isdir(os.path.join(out, "tokenizer"))


def test_quiz_asks_colour_and_shape_of_every_object_in_one_row(tmp_path) -> None:
    plain, quiz = _plain_and_variant(tmp_path, with_quiz=True)
    assert plain["eval"] == quiz["eval"] and plain["stage1"] == quiz["stage1"]
    quizzes = [r for r in quiz["stage2"] if r["qtype"] == "quiz"]
    where = [r for r in plain["stage2"] if r["qtype"] == "position"]  # "where is X ?" as before
    assert sorted(quiz["stage2"], key=lambda r: r["id"]) == sorted(
        quizzes + where + plain["stage1"], key=lambda r: r["id"]
    )
    assert len(quizzes) == len(plain["stage1"]) == len(where)
    for cap_row, row in zip(plain["stage1"], quizzes):
        objs = _objects(cap_row["caption"])
        turns = row["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (2 * len(objs) + 1)
        assert turns[0]["value"].startswith("<image>\n") and not any("<image>" in t["value"] for t in turns[1:])
        qa = {turns[k]["value"].removeprefix("<image>\n"): turns[k + 1]["value"] for k in range(0, len(turns), 2)}
        want = {"how many shapes are there ?": ("zero", "one", "two", "three", "four")[len(objs)]}
        for colour, shape, pos in objs:
            want |= {f"what color is the shape at {pos} ?": colour, f"what shape is at {pos} ?": shape}
        assert qa == want and row["image"] == cap_row["image"] and row["caption"] == cap_row["caption"]


def test_contrast_images_share_one_colour_or_one_shape(tmp_path) -> None:
    plain_dir, more_dir = str(tmp_path / "plain"), str(tmp_path / "more")
    generate(plain_dir, n=40, seed=3)
    world = generate(more_dir, n=40, seed=3, contrast=6)
    plain, more = _splits(plain_dir), _splits(more_dir)
    assert plain["eval"] == more["eval"] and more["stage1"][: len(plain["stage1"])] == plain["stage1"]
    pd, md = _digest(plain_dir), _digest(more_dir)
    assert pd["tokenizer/tokenizer.json"] == md["tokenizer/tokenizer.json"]  # no new words
    assert {k: v for k, v in md.items() if k.startswith("images/0")} == {
        k: v for k, v in pd.items() if k.startswith("images/")
    }
    added = more["stage1"][len(plain["stage1"]) :]
    assert [r["image"] for r in added] == [f"images/c{k:05d}.png" for k in range(6)] and world["contrast"] == 6
    for k, row in enumerate(added):
        objs = _objects(row["caption"])
        shared = {o[k % 2] for o in objs}  # even: one colour, odd: one shape
        others = {o[1 - k % 2] for o in objs}
        assert 2 <= len(objs) <= 3 and len(shared) == 1 and len(others) == len(objs)
        questions = [r for r in more["stage2"] if r["image"] == row["image"] and r["qtype"] != "caption"]
        assert sorted(r["qtype"] for r in questions) == ["colour", "count", "position", "shape"]
        where = next(r for r in questions if r["qtype"] == "position")
        colour, shape = where["conversations"][0]["value"].split()[-3:-1]
        assert where["conversations"][1]["value"] == next(p for c, s, p in objs if (c, s) == (colour, shape))
    assert len(more["stage2"]) == len(plain["stage2"]) + 6 * 5  # four questions and the caption again


def test_negative_contrast_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="--contrast must be >= 0"):
        generate(str(tmp_path / "w"), n=40, seed=3, contrast=-1)


def test_wheres_ask_every_object_that_shares_its_colour(tmp_path) -> None:
    plain_dir, wheres_dir = str(tmp_path / "plain"), str(tmp_path / "wheres")
    generate(plain_dir, n=40, seed=3, contrast=6)
    world = generate(wheres_dir, n=40, seed=3, contrast=6, with_wheres=True)
    same = {"world.json": "", "stage2.json": ""}  # every other file, images and tokenizer included, is the same
    assert _digest(plain_dir) | same == _digest(wheres_dir) | same
    plain, wheres = _splits(plain_dir), _splits(wheres_dir)
    assert world["wheres"] and world["splits"]["stage2"] == len(wheres["stage2"]) - len(wheres["stage1"])
    assert plain["eval"] == wheres["eval"] and plain["stage1"] == wheres["stage1"]
    added = [r for r in wheres["stage2"] if "-where" in r["id"]]
    assert sorted(wheres["stage2"], key=lambda r: r["id"]) == sorted(plain["stage2"] + added, key=lambda r: r["id"])
    expected = 0
    for cap_row in plain["stage1"]:
        objs = _objects(cap_row["caption"])
        asked = next(
            r["conversations"][0]["value"].removeprefix("<image>\n")
            for r in plain["stage2"]
            if r["image"] == cap_row["image"] and r["qtype"] == "position"
        )
        want = {
            f"where is the {c} {s} ?": p
            for c, s, p in objs
            if sum(o[0] == c for o in objs) > 1 and f"where is the {c} {s} ?" != asked
        }
        rows = [r for r in added if r["image"] == cap_row["image"]]
        got = {r["conversations"][0]["value"].removeprefix("<image>\n"): r["conversations"][1]["value"] for r in rows}
        assert got == want and len(rows) == len(want)
        assert all(r["qtype"] == "position" and r["caption"] == cap_row["caption"] for r in rows)
        expected += len(want)
    assert expected == len(added) > 0
