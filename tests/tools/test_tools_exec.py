"""Built-in tools, the registry/executor, the shapes tool rows and the training-time skip reasons."""

from __future__ import annotations

import copy
import json
import os
import random
import time

import numpy as np
import pytest
from PIL import Image
from test_tools_format import BAD_ROWS, _bad, tool_row

from mage_fast.apps.tools.registry import Registry, Tool, make_registry
from mage_fast.data import ImageTransform, LlavaDataset
from mage_fast.shapes.builtin import apply_edit, edit_scene, read_scene, render_scene
from mage_fast.shapes.tool_tasks import generate_tools
from mage_fast.shapes.world import Obj, draw_scene, sample_scene
from mage_fast.toolcall.format import Call, check_row


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im)


def test_render_and_edit_are_deterministic_and_read_back() -> None:
    objs = [
        {"shape": "circle", "colour": "red", "position": "top left"},
        {"shape": "square", "colour": "blue", "position": "center"},
    ]
    a, b = render_scene(objs), render_scene(list(reversed(objs)))
    assert np.array_equal(_px(a), _px(b)) and np.array_equal(
        _px(a), _px(draw_scene([Obj("red", "circle", 0), Obj("blue", "square", 4)], 48, None))
    )
    rng = random.Random(5)
    for _ in range(200):  # the jittered world's images read back exactly
        scene = sample_scene(rng)
        assert sorted(read_scene(draw_scene(scene, 48, rng)), key=lambda o: o.cell) == scene
    edited = edit_scene([{"op": "recolour", "shape": "circle", "colour": "red", "to": "green"},
                         {"op": "move", "shape": "square", "colour": "blue", "to": "bottom right"},
                         {"op": "add", "shape": "triangle", "colour": "yellow", "to": "top"}], images=[a])  # fmt: skip
    assert read_scene(edited) == [Obj("green", "circle", 0), Obj("yellow", "triangle", 1), Obj("blue", "square", 8)]
    with pytest.raises(ValueError, match="no red triangle"):
        apply_edit(read_scene(a), {"op": "remove", "shape": "triangle", "colour": "red"})
    with pytest.raises(ValueError, match="taken"):
        apply_edit(read_scene(a), {"op": "add", "shape": "triangle", "colour": "red", "to": "center"})


def _slow(x: str) -> str:
    time.sleep(1.0)
    return x


SCHEMA = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}


def test_executor_turns_every_failure_into_an_error_observation(tmp_path, monkeypatch) -> None:
    def boom(x: str) -> str:
        raise RuntimeError("kaput")

    reg = Registry([Tool(boom, {"name": "boom", "parameters": SCHEMA}), Tool(_slow, {"name": "slow", "parameters": SCHEMA}),
                    Tool(lambda x: 3, {"name": "int", "parameters": SCHEMA}),
                    Tool(lambda x: {"echo": x}, {"name": "echo", "parameters": SCHEMA})], timeout_s=0.2)  # fmt: skip
    cases = {"boom": "boom raised RuntimeError: kaput", "slow": "slow timed out after 0.2 s",
             "int": "int returned int; a tool returns str, dict, list or a PIL image", "nope": "unknown_tool"}  # fmt: skip
    for name, msg in cases.items():
        obs = reg.execute(Call(name, {"x": "a"}))
        assert obs.error is not None and msg in obs.error and json.loads(obs.text) == {"error": obs.error}
    assert "tool_schema" in reg.execute(Call("echo", {"x": 1})).error
    assert reg.execute(Call("echo", {"x": "hi"})).text == '{"echo": "hi"}'
    # a user module's TOOLS join the built-in ones; an image result is an <image> observation
    (tmp_path / "my_tools.py").write_text(
        "from PIL import Image\nfrom mage_fast.apps.tools.registry import Tool\n"
        "def blank(n):\n    return Image.new('RGB', (n, n))\n"
        "TOOLS = [Tool(blank, {'name': 'blank', 'parameters': {'type': 'object', 'properties': {'n': {'type': 'integer'}}}})]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = make_registry(["my_tools"])
    assert sorted(reg.tools) == ["blank", "edit_scene", "render_scene"]
    obs = reg.execute(Call("blank", {"n": 4}))
    assert obs.text == "<image>" and obs.images[0].size == (4, 4) and obs.error is None
    assert (
        "edit_scene needs an image"
        in reg.execute(Call("edit_scene", {"edits": [{"op": "remove", "shape": "circle", "colour": "red"}]})).error
    )


@pytest.fixture(scope="module")
def tool_world(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("tools"))
    generate_tools(out, n=80, seed=2)
    return out


def test_generated_rows_validate_replay_and_tokenize(tool_world, tokenizer) -> None:
    train, evals = (json.load(open(os.path.join(tool_world, f"{s}.json"))) for s in ("train", "eval"))
    assert {r["kind"] for r in train} == {"draw", "edit", "edit_describe", "none"}
    ins = lambda rows: {p for r in rows for p in r["image"] if p.endswith("-in.png")}  # noqa: E731
    assert ins(evals) and not ins(train) & ins(evals)  # held-out input images
    reg = make_registry()
    for r in train + evals:
        check_row(r)
        if "target" in r:  # the reference call, executed again, gives the target pixel for pixel
            (call,) = [
                Call(**c) for c in [json.loads(t["value"]) for t in r["conversations"] if t["from"] == "function_call"]
            ]
            imgs = [Image.open(os.path.join(tool_world, p)).convert("RGB") for p in r["image"][:-1]]
            out = reg.execute(call, imgs)
            assert out.error is None and np.array_equal(
                _px(out.images[0]), _px(Image.open(os.path.join(tool_world, r["target"])).convert("RGB"))
            )
    ds = LlavaDataset(os.path.join(tool_world, "train.json"), tokenizer, image_root=tool_world, transform=ImageTransform(48),
                      num_image_tokens=9, max_length=512, max_bad_fraction=0.0)  # fmt: skip
    assert ds.stats.kept == len(train) and int((ds._tok_ids == tokenizer.unk_token_id).sum()) == 0


def test_training_skips_and_counts_bad_tool_rows(tmp_path, tokenizer) -> None:
    for name in ("in.png", "out.png"):
        Image.new("RGB", (48, 48)).save(tmp_path / name)
    rows = [tool_row()] + [
        _bad(reason, **copy.deepcopy(change)) | {"id": f"{reason}-{i}"} for i, (reason, change) in enumerate(BAD_ROWS)
    ]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    ds = LlavaDataset(str(tmp_path / "rows.json"), tokenizer, image_root=str(tmp_path), transform=ImageTransform(48),
                      num_image_tokens=2, max_length=2048, max_bad_fraction=1.0)  # fmt: skip
    want: dict[str, list[str]] = {}
    for i, (reason, _) in enumerate(BAD_ROWS):
        want.setdefault(reason, []).append(f"{reason}-{i}")
    assert {k: v for k, v in ds.stats.ids.items() if v} == want and ds.ids == ["r1"]
