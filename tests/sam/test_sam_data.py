"""Multi-image data: SAM / Mantis converters, LLaVA rows with image lists (up front and
interleaved), the shapes world's group / change / story tasks checked against their captions, the
linked object small and listed per image, unchanged objects drawn pixel for pixel alike."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from transformers import AutoTokenizer

from mage_fast.data import Collator, ImageTransform, LlavaDataset, ensure_special_tokens
from mage_fast.data.multi import convert, from_mantis, from_sam, place_images
from mage_fast.shapes.multi import STORY_LEN, Design, generate
from mage_fast.shapes.world import POSITIONS

OBJ = re.compile(r"(red|green|blue|yellow) (circle|square|triangle) at ([a-z ]+?)(?= ,| \.)")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("multi"))
    generate(out, n=12, seed=0, n_eval=4)
    return out


def _scene(cap: str) -> set[tuple[str, str, str]]:
    return set(OBJ.findall(cap))


def test_place_images():
    assert place_images("what ?", 2) == "<image>\n<image>\nwhat ?"
    assert place_images("a <image> b <image>", 2) == "a <image> b <image>"
    with pytest.raises(ValueError, match="1 <image> placeholders for 2"):
        place_images("a <image>", 2)


def test_from_sam_and_mantis():
    r = from_sam({"id": 7, "img_list": ["a.png", "b.png"], "instruction": "share ?", "output": ["x", "y"]})
    assert r["image"] == ["a.png", "b.png"] and r["refs"] == ["x", "y"] and r["id"] == "7"
    assert r["conversations"] == [
        {"from": "human", "value": "<image>\n<image>\nshare ?"},
        {"from": "gpt", "value": "x"},
    ]
    m = from_mantis({"id": "m", "images": [{"path": "a.png"}, "b.png"], "conversation": [
        {"role": "user", "content": "compare"}, {"role": "assistant", "content": "same"},
        {"role": "user", "content": "why ?"}, {"role": "assistant", "content": "shape"}]})  # fmt: skip
    assert m["image"] == ["a.png", "b.png"] and m["conversations"][0]["value"] == "<image>\n<image>\ncompare"
    assert [t["from"] for t in m["conversations"]] == ["human", "gpt", "human", "gpt"]
    rows, skipped = convert([{"id": 1, "img_list": ["a"], "instruction": "<image><image>", "output": "o"},
                             {"img_list": ["a"]}, "junk"], "sam")  # fmt: skip
    assert rows == [] and set(skipped) == {"1", "row 1", "row 2"} and "2 <image>" in skipped["1"]


def test_llava_rows_with_image_lists(tmp_path, world):
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    ensure_special_tokens(tok)
    rows = [
        {"id": "front", "image": ["images/000000.png", "images/000001.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nwhat changed ?"}, {"from": "gpt", "value": "red"}]},
        {"id": "inter", "image": ["images/000000.png", "images/000001.png"], "conversations": [
            {"from": "human", "value": "<image> what changed <image> ?"}, {"from": "gpt", "value": "red"}]},
        {"id": "bad", "image": ["images/000000.png"], "conversations": [
            {"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "red"}]},
    ]  # fmt: skip
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    ds = LlavaDataset(path, tok, image_root=world, transform=ImageTransform(48), num_image_tokens=3,
                      max_length=128, max_bad_fraction=0.5)  # fmt: skip
    assert ds.ids == ["front", "inter"] and ds.stats.counts["placeholder_mismatch"] == 1
    img = tok.convert_tokens_to_ids("<image>")
    inter = ds[1]["input_ids"].tolist()
    first = inter.index(img)
    assert inter[first : first + 3] == [img] * 3 and inter[first + 3] != img  # text between the images
    assert sum(t == img for t in inter) == 6
    batch = Collator(tok.pad_token_id, 48)([ds[0], ds[1]])
    assert batch["image_counts"].tolist() == [2, 2] and batch["pixel_values"].shape == (4, 3, 48, 48)
    assert torch.equal(batch["pixel_values"][:2], batch["pixel_values"][2:])


def _digest(root: str) -> str:
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            h.update(name.encode() + open(os.path.join(d, name), "rb").read())
    return h.hexdigest()


def test_world_deterministic_and_held_out(tmp_path, world):
    again = str(tmp_path / "again")
    generate(again, n=12, seed=0, n_eval=4)
    assert _digest(again) == _digest(world)
    train = json.load(open(os.path.join(world, "train.json")))
    evals = json.load(open(os.path.join(world, "eval.json")))
    assert len(train) == 36 and len(evals) == 12
    assert {r["task"] for r in evals} == {"group", "change", "story"}
    assert not {p for r in train for p in r["image"]} & {p for r in evals for p in r["image"]}
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    ensure_special_tokens(tok)
    ds = LlavaDataset(os.path.join(world, "train.json"), tok, image_root=world, transform=ImageTransform(48),
                      num_image_tokens=9, max_length=128, max_bad_fraction=0.0)  # fmt: skip
    assert ds.stats.skipped == 0 and tok.unk_token_id not in ds[0]["input_ids"].tolist()


def _check(task: str, scenes: list[set], answer: str) -> None:
    pairs = [{(c, s) for c, s, _ in sc} for sc in scenes]
    if task == "group":
        assert 2 <= len(scenes) <= 4
        common = set.intersection(*pairs)
        assert len(common) == 1 and answer == "every scene has a {} {} .".format(*common.pop())
        return
    if task == "change":
        a, b = scenes
        gone, new = a - b, b - a
        if not gone:
            ((c, s, p),) = new
            assert answer == f"a {c} {s} appeared at {p} ."
        elif not new:
            ((c, s, p),) = gone
            assert answer == f"the {c} {s} disappeared from {p} ."
        else:
            (c0, s0, p0), (c1, s1, p1) = gone.pop(), new.pop()
            want = f"the {c0} {s0} moved from {p0} to {p1} ." if p0 != p1 else f"the {c0} {s0} turned {c1} ."
            assert s0 == s1 and answer == want
        return
    assert len(scenes) == STORY_LEN
    sentences = [t.strip() + " ." for t in answer.split(" .") if t.strip()]
    assert len(sentences) == STORY_LEN
    for a, b, text in zip(scenes, scenes[1:], sentences[1:]):
        (c0, s0, p0), (c1, s1, p1) = (a - b).pop(), (b - a).pop()
        assert len(a - b) == 1 and s0 == s1
        assert text == (f"then it moves to {p1} ." if p0 != p1 else f"then it turns {c1} .")


def test_answers_match_the_scenes(world):
    rows = json.load(open(os.path.join(world, "train.json"))) + json.load(open(os.path.join(world, "eval.json")))
    for r in rows:
        assert r["refs"] == [r["conversations"][1]["value"]] and len(r["caption"]) == len(r["image"])
        _check(r["task"], [_scene(c) for c in r["caption"]], r["refs"][0])


def _cell_box(cell: int, size: int) -> tuple[int, int, int, int]:
    r, c = divmod(cell, 3)
    return c * size // 3, r * size // 3, (c + 1) * size // 3, (r + 1) * size // 3


def _ink(img, cell: int) -> int:
    crop = img.crop(_cell_box(cell, img.size[0])).convert("L")
    return sum(1 for p in crop.getdata() if p)


def test_linked_object_small_and_listed(world):
    from PIL import Image

    rows = json.load(open(os.path.join(world, "train.json")))
    crowded = []
    for r in rows:
        for j, (cap, link) in enumerate(zip(r["caption"], r["link"])):
            objs = _scene(cap)
            crowded.append(len(objs))
            if link is None:  # only the scene before an object appears or after it disappears
                assert r["task"] == "change" and (j, r["refs"][0].split()[3]) in {(0, "appeared"), (1, "disappeared")}
                continue
            colour, shape, cell = link
            assert (colour, shape, POSITIONS[cell]) in objs
            img = Image.open(os.path.join(world, r["image"][j]))
            big = [_ink(img, POSITIONS.index(p)) for c, s, p in objs if (c, s) != (colour, shape)]
            assert _ink(img, cell) < min(big), (r["id"], j)
    assert min(crowded) >= 2 and max(crowded) <= 7 and sum(crowded) / len(crowded) >= 4


def test_unchanged_objects_drawn_alike(world):
    from PIL import Image, ImageChops

    rows = json.load(open(os.path.join(world, "train.json")))
    for r in (x for x in rows if x["task"] in ("change", "story")):
        imgs = [Image.open(os.path.join(world, p)).convert("RGB") for p in r["image"]]
        cells = {link[2] for link in r["link"] if link is not None}
        for a, b in zip(imgs, imgs[1:]):
            diff = ImageChops.difference(a, b)
            for cell in cells:
                diff.paste((0, 0, 0), _cell_box(cell, a.size[0]))
            assert diff.getbbox() is None, r["id"]  # every pixel outside the linked cells is equal


def test_design_checked():
    with pytest.raises(ValueError, match="objects per scene"):
        Design(min_objects=5, max_objects=4)
    with pytest.raises(ValueError, match="link_half"):
        Design(link_half=0.6)
