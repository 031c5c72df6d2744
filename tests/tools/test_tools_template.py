"""Tool rows through the template: the rendering, and labels on calls and answers only."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from mage_fast.data.template import IGNORE_INDEX, ConversationTemplate, to_messages
from mage_fast.shapes.builtin import EDIT_SCHEMA

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "data"))
from _data_helpers import make_tokenizer  # noqa: E402

CALL = {"name": "edit_scene", "arguments": {"edits": [{"op": "remove", "shape": "circle", "colour": "red"}]}}
TURNS = [
    {"from": "human", "value": "<image>\nremove the red circle ."},
    {"from": "function_call", "value": json.dumps(CALL)},
    {"from": "observation", "value": "<image>"},
    {"from": "gpt", "value": "done ."},
]
MARKUP = '<tool_call>\n{"name":"edit_scene","arguments":{"edits":[{"op":"remove","shape":"circle","colour":"red"}]}}\n</tool_call>'
# A Qwen2.5-like template with native tools (tools=, tool_calls, role tool)
NATIVE = (
    "{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t['function'] | tojson }}{% endfor %}\n"
    "</tools><|im_end|>\n{% endif %}{% for m in messages %}{% if m['tool_calls'] %}<|im_start|>assistant\n"
    "{% for c in m['tool_calls'] %}<tool_call>\n{{ c['function'] | tojson }}\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% elif m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_builtin_rendering_is_pinned(tokenizer) -> None:
    t = ConversationTemplate(tokenizer, num_image_tokens=2)
    text, spans = t.render(to_messages(TURNS), tools=[EDIT_SCHEMA])
    tools = "<tools>\n" + json.dumps(EDIT_SCHEMA, separators=(",", ":")) + "\n</tools>\n"
    assert text == (
        f"<s>{tools}USER: <image>\nremove the red circle .\nASSISTANT: {MARKUP}</s>\n"
        "TOOL: <tool_response>\n<image>\n</tool_response>\nASSISTANT: done .</s>\n"
    )
    assert [text[a:b] for a, b in spans] == [MARKUP + "</s>", "done .</s>"]


def test_labels_cover_calls_and_answers_with_end_of_turn(tokenizer) -> None:
    t = ConversationTemplate(tokenizer, num_image_tokens=3)
    ids, labels = t.encode(TURNS, tools=[EDIT_SCHEMA])
    assert int((ids == tokenizer.unk_token_id).sum()) == 0  # the shapes vocabulary covers the markup
    assert int((ids == t.image_token_id).sum()) == 6 and bool((labels[ids == t.image_token_id] == IGNORE_INDEX).all())
    got = tokenizer.decode(ids[labels != IGNORE_INDEX])
    want = tokenizer.decode(tokenizer(MARKUP + "</s> done .</s>", add_special_tokens=False)["input_ids"])
    assert got == want  # the call, its </s>, the answer, its </s>; nothing of tools, question, observation
    eos = np.nonzero((ids == tokenizer.eos_token_id).numpy())[0]
    assert len(eos) == 2 and all(labels[i] == tokenizer.eos_token_id for i in eos)


def test_native_tools_chat_template_and_markup_fallback() -> None:
    tok = make_tokenizer(chat=True)
    tok.chat_template = NATIVE
    t = ConversationTemplate(tok, num_image_tokens=1)
    assert t.native_tools
    text, spans = t.render(to_messages(TURNS), tools=[EDIT_SCHEMA])
    assert text.startswith("<|im_start|>system\n<tools>{") and "<|im_start|>user\n<tool_response>\n<image>" in text
    call = "<tool_call>\n" + json.dumps(CALL) + "\n</tool_call><|im_end|>"
    assert [text[a:b] for a, b in spans] == [call, "done .<|im_end|>"]
    plain = ConversationTemplate(make_tokenizer(chat=True), num_image_tokens=1)  # ChatML without tools
    assert not plain.native_tools
    text, spans = plain.render(to_messages(TURNS), tools=[EDIT_SCHEMA])
    assert text.startswith("<|im_start|>system\n<tools>\n") and "<|im_start|>user\n<tool_response>\n<image>\n" in text
    assert [text[a:b] for a, b in spans] == [MARKUP + "<|im_end|>", "done .<|im_end|>"]
