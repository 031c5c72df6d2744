"""The scores on hand-made cases, and the tool loop driven by a scripted model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mage_fast.apps.tools.agent import Agent, Episode, Step
from mage_fast.apps.tools.registry import make_registry
from mage_fast.apps.tools.score import calls_match, f1, leaves, normalize, reference, score_episodes
from mage_fast.data import ImageTransform
from mage_fast.shapes.builtin import render_scene
from mage_fast.toolcall.convert import calls_markup
from mage_fast.toolcall.format import Call

RED = {"objects": [{"shape": "circle", "colour": "red", "position": "top left"}]}
BLUE = {"objects": [{"shape": "square", "colour": "blue", "position": "center"}]}


def test_normalisation_and_order_free_parallel_match() -> None:
    assert normalize({"A": " Top  Left ", "n": 2, "l": [1, "X"]}) == {"a": "top left", "n": 2.0, "l": [1.0, "x"]}
    a, b = Call("render_scene", RED), Call("render_scene", BLUE)
    assert calls_match([a, b], [b, a]) and not calls_match([a], [a, b]) and not calls_match([a, a], [a, b])
    assert calls_match([Call("f", {"x": 2})], [Call("f", {"x": 2.0})])
    assert not calls_match([Call("f", {"l": [1, 2]})], [Call("f", {"l": [2, 1]})])  # list order is kept
    lp = leaves([Call("render_scene", {"objects": [{"shape": "circle", "colour": "blue", "position": "top left"}]})])
    lr = leaves([a])
    assert sum((lp & lr).values()) == 3 and sum(lr.values()) == 4  # name, shape, position match; colour not
    assert f1(3, 4, 4) == pytest.approx(0.75) and f1(0, 0, 4) == 0.0


def _rec(ref, answer, target, steps, produced=(), final=None) -> dict:
    ep = Episode([], [], steps=steps, final=final, produced=list(produced))
    return {"ref_calls": ref, "ref_answer": answer, "target": target, "episode": ep}


def test_scores_on_hand_made_episodes() -> None:
    red, blue = render_scene(RED["objects"]), render_scene(BLUE["objects"])
    recs = [
        _rec([Call("render_scene", RED)], "done .", red, [Step("", [Call("render_scene", RED)]), Step("done .")], [red], "done ."),
        _rec([Call("render_scene", RED)], "done .", red, [Step("", [Call("render_scene", BLUE)]), Step("ok")], [blue], "ok"),
        _rec([Call("render_scene", RED)], "done .", red, [Step("<tool_call> {", valid=False)]),
        _rec([], "red", None, [Step("red")], final="red"),
        _rec([], "two", None, [Step("", [Call("edit_scene", {"edits": []})], valid=False)]),
    ]  # fmt: skip
    s = score_episodes(recs)
    assert s["valid_call"] == pytest.approx(2 / 4)  # turns with a call block: 2 valid of 4
    assert s["tool_name"] == pytest.approx(2 / 3) and s["argument_match"] == pytest.approx(1 / 3)
    assert s["argument_f1"] == pytest.approx(f1(4 + 1, 8, 12))  # row 2 matches the name only; row 3 none
    assert s["over_call"] == pytest.approx(1 / 2) and s["end_to_end"] == pytest.approx(1 / 3)
    assert s["answer"] == pytest.approx(2 / 5)
    assert s["n"] == {"rows": 5, "call_turns": 4, "tool_rows": 3, "no_tool_rows": 2, "image_targets": 3, "answers": 5}


class ScriptedModel:
    """Stands in for MageModel.generate: replies with fixed texts in order (the loop is under test)."""

    num_image_tokens, image_size = 2, 48

    def __init__(self, tok, replies: list[str]):
        self.tok, self.replies, self.seen = tok, list(replies), []

    def generate(self, ids, pix, counts, max_new_tokens, eos):
        self.seen.append((ids.shape, tuple(pix.shape), counts.tolist()))
        return [self.tok(self.replies.pop(0), add_special_tokens=False)["input_ids"] for _ in range(ids.shape[0])]


def test_agent_executes_feeds_images_back_and_stops(tokenizer) -> None:
    call = calls_markup([Call("render_scene", RED)])  # what the trained model writes
    model = ScriptedModel(tokenizer, [call, "done ."])
    agent = Agent(model, tokenizer, make_registry(), ImageTransform(48))
    (ep,) = agent.run([Episode([{"from": "human", "value": "draw a red circle at top left ."}], [])])
    assert ep.final == "done ." and [s.valid for s in ep.steps] == [True, True]
    assert ep.steps[0].calls == [Call("render_scene", RED)]  # parsed from the word-level decode (spaces)
    assert [t["from"] for t in ep.turns] == ["human", "function_call", "observation", "gpt"]
    assert model.seen[1][1] == (1, 3, 48, 48) and model.seen[1][2] == [1]  # the image went back in
    assert np.array_equal(np.asarray(ep.produced[0]), np.asarray(render_scene(RED["objects"])))
    bad = ScriptedModel(tokenizer, ["<tool_call>\n{ name\n</tool_call>"])
    (ep,) = Agent(bad, tokenizer, make_registry(), ImageTransform(48)).run(
        [Episode([{"from": "human", "value": "draw"}], [])]
    )
    assert ep.invalid and ep.final is None and not ep.steps[0].valid
    loop = ScriptedModel(tokenizer, [call] * 3)
    (ep,) = Agent(loop, tokenizer, make_registry(), ImageTransform(48), max_steps=3).run(
        [Episode([{"from": "human", "value": "draw"}], [])]
    )
    assert len(ep.steps) == 3 and ep.final is None and len(ep.produced) == 3  # the step limit ends it


def test_reference_of_a_row() -> None:
    row = {"conversations": [{"from": "human", "value": "draw"}, {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                             {"from": "observation", "value": "<image>"}, {"from": "gpt", "value": "done ."}]}  # fmt: skip
    assert reference(row) == (1, [Call("f", {})], "done .")
    assert isinstance(Image.new("RGB", (1, 1)), Image.Image)
