"""LLaVA's templates pinned to the exact strings LLaVA's conversation.py / preprocess_plain produce
for a multi-turn row with an image, and their label masks (answers and their end token only)."""

from __future__ import annotations

import pytest
from testutil import turns

from mage_fast.data.llava_conv import llava_prompt, make_template
from mage_fast.data.template import IGNORE_INDEX, to_messages

# The image placeholder sits after the question, as in many LLaVA rows: LLaVA moves it first.
ROW = turns(
    ("human", "What is in the picture?\n<image>"),
    ("gpt", "A red circle."),
    ("human", "Where is it?"),
    ("gpt", "At the top left."),
    ("human", "And its colour?"),
    ("gpt", "Red."),
)
# Strings printed by LLaVA's own Conversation.get_prompt() (haotian-liu/LLaVA llava/conversation.py)
# for these turns after its preprocess_multimodal, kept here as literals.
VICUNA_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the picture? ASSISTANT: "
    "A red circle.</s>USER: Where is it? ASSISTANT: At the top left.</s>USER: And its colour? ASSISTANT: Red.</s>"
)
LLAMA_2 = (
    "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
    "<</SYS>>\n\n<image>\nWhat is in the picture? [/INST] A red circle. </s><s>[INST] Where is it? [/INST] "
    "At the top left. </s><s>[INST] And its colour? [/INST] Red. </s>"
)
GEN = {
    "vicuna_v1": VICUNA_V1.split(" ASSISTANT: A red")[0] + " ASSISTANT:",
    "llava_llama_2": LLAMA_2.split(" A red")[0],
    "plain": "<image>\nWhat is in the picture?\n",
}


@pytest.mark.parametrize(
    "name, text, answers",
    [("vicuna_v1", VICUNA_V1, ["A red circle.</s>", "At the top left.</s>", "Red.</s>"]),
     ("llava_llama_2", LLAMA_2, ["A red circle. </s>", "At the top left. </s>", "Red. </s>"]),
     ("plain", "<image>A red circle.\n", ["A red circle.\n"])],
)  # fmt: skip
def test_rendering_is_llavas(name: str, text: str, answers: list[str]) -> None:
    row = ROW if name != "plain" else ROW[:2]  # plain is one exchange (LLaVA asserts it)
    got, spans = llava_prompt(name, to_messages(row))
    assert got == text
    assert [got[a:b] for a, b in spans] == answers
    assert llava_prompt(name, to_messages(ROW[:1]), add_generation_prompt=True)[0] == GEN[name]


def test_system_turn_and_errors() -> None:
    msgs = to_messages([{"from": "system", "value": "Be brief."}, *ROW[:2]])
    assert llava_prompt("vicuna_v1", msgs)[0].startswith("Be brief. USER: <image>\n")
    with pytest.raises(ValueError, match="alternating"):
        llava_prompt("vicuna_v1", to_messages([ROW[0], ROW[2]]))
    with pytest.raises(ValueError, match="one exchange"):
        llava_prompt("plain", to_messages(ROW))
    with pytest.raises(ValueError, match="unknown LLaVA template"):
        llava_prompt("llava_v9", to_messages(ROW))


@pytest.mark.parametrize("name", ["vicuna_v1", "llava_llama_2", "plain"])
def test_labels_are_answers_and_end_tokens(name: str, tokenizer) -> None:
    """Tokens with a loss decode to exactly the answers and their end token; the prompt tokens of
    generation equal the training tokens up to the first answer (no train/generate mismatch)."""
    row = ROW if name != "plain" else ROW[:2]
    t = make_template(tokenizer, 3, name)
    ids, labels = t.encode(row)
    assert int(ids[0]) == tokenizer.bos_token_id
    assert int((ids == t.image_token_id).sum()) == 3
    kept = [int(x) for x in labels if x != IGNORE_INDEX]
    text, spans = llava_prompt(name, to_messages(row))
    want = [i for a, b in spans for i in tokenizer(text[a:b], add_special_tokens=False)["input_ids"]]
    assert kept == want and len(kept) > 3
    assert kept.count(tokenizer.eos_token_id) == (0 if name == "plain" else 3)
    prompt = t.encode_prompt(row[:1])
    if name != "plain":  # plain's generation prompt keeps the question, its training row does not
        assert ids[: len(prompt)].tolist() == prompt.tolist()
