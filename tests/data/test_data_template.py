"""Templates: label masks, image expansion, both routes (built-in and chat_template), special tokens."""

from __future__ import annotations

import pytest
import torch
from _data_helpers import make_tokenizer
from testutil import turns

from mage_fast.data import (
    IGNORE_INDEX,
    ConversationTemplate,
    encode_conversation,
    encode_generation_prompt,
    ensure_special_tokens,
    image_token_id,
    to_messages,
)

K = 3  # image tokens per image
CONV = turns(
    ("system", "you are a helpful assistant"),
    ("human", "<image>\nwhat is this"),
    ("gpt", "a red circle"),
    ("human", "and that <image> ?"),
    ("gpt", "a blue square"),
)


def toks(tok, ids: torch.Tensor) -> list[str]:
    return tok.convert_ids_to_tokens(ids.tolist())


def labelled(tok, ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    assert torch.equal(labels[labels != IGNORE_INDEX], ids[labels != IGNORE_INDEX])
    return tok.convert_ids_to_tokens(ids[labels != IGNORE_INDEX].tolist())


def test_builtin_single_turn(tok):
    ids, labels = encode_conversation(tok, CONV[1:3], num_image_tokens=K)
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
    assert toks(tok, ids) == ["<s>", "USER", ":"] + ["<image>"] * K + [
        "what",
        "is",
        "this",
        "ASSISTANT",
        ":",
        "a",
        "red",
        "circle",
        "</s>",
    ]
    assert labelled(tok, ids, labels) == ["a", "red", "circle", "</s>"]


def test_builtin_multi_turn_multi_image_system(tok):
    t = ConversationTemplate(tok, num_image_tokens=K)
    assert not t.use_chat_template
    ids, labels = t.encode(CONV)
    words = toks(tok, ids)
    assert words[:5] == ["<s>", "you", "are", "a", "helpful"]
    img = [i for i, w in enumerate(words) if w == "<image>"]
    assert len(img) == 2 * K
    assert words[img[0] - 2 : img[0]] == ["USER", ":"] and words[img[K - 1] + 1] == "what"
    assert words[img[K] - 2 : img[K]] == ["and", "that"] and words[img[-1] + 1] == "?"
    assert (labels[img] == IGNORE_INDEX).all()
    assert labelled(tok, ids, labels) == ["a", "red", "circle", "</s>", "a", "blue", "square", "</s>"]
    # the system turn, the user turns and the "ASSISTANT:" prefixes are never labelled
    assert words.count("ASSISTANT") == 2 and (labels[: words.index("a", 5)] == IGNORE_INDEX).all()


def test_chat_template_route(chat_tok):
    t = ConversationTemplate(chat_tok, num_image_tokens=K)
    assert t.use_chat_template
    ids, labels = t.encode(CONV)
    words = toks(chat_tok, ids)
    assert words[:3] == ["<|im_start|>", "system", "you"]
    assert "USER" not in words and "<s>" not in words  # the template owns the format
    img = [i for i, w in enumerate(words) if w == "<image>"]
    assert len(img) == 2 * K and words[img[0] - 1] == "user" and words[img[-1] + 1] == "?"
    # answer + end-of-turn token; the "<|im_start|> assistant" header is prompt
    assert labelled(chat_tok, ids, labels) == ["a", "red", "circle", "<|im_end|>", "a", "blue", "square", "<|im_end|>"]


def test_chat_template_can_be_bypassed(chat_tok):
    ids, _ = ConversationTemplate(chat_tok, num_image_tokens=1, use_chat_template=False).encode(CONV[1:3])
    assert toks(chat_tok, ids)[:3] == ["<s>", "USER", ":"]
    with pytest.raises(ValueError, match="no chat_template"):
        ConversationTemplate(make_tokenizer(), num_image_tokens=1, use_chat_template=True)


@pytest.mark.parametrize("chat", [False, True])
def test_generation_prompt_is_prefix_of_training_ids(chat):
    tok = make_tokenizer(chat=chat)
    ids, labels = encode_conversation(tok, CONV, num_image_tokens=K)
    prompt = encode_generation_prompt(tok, CONV[:-1], num_image_tokens=K)
    first_answer_of_last_turn = int((labels != IGNORE_INDEX).nonzero()[4])  # 5th labelled = 2nd answer start
    assert torch.equal(prompt, ids[:first_answer_of_last_turn])
    tail = toks(tok, prompt)[-2:]
    assert tail == (["<|im_start|>", "assistant"] if chat else ["ASSISTANT", ":"])
    with pytest.raises(ValueError, match="last turn"):
        encode_generation_prompt(tok, CONV, num_image_tokens=K)


def test_text_only_and_no_answer(tok):
    turns = [{"from": "human", "value": "what"}, {"from": "gpt", "value": "yes"}]
    ids, labels = encode_conversation(tok, turns, num_image_tokens=K)
    assert image_token_id(tok) not in ids.tolist() and labelled(tok, ids, labels) == ["yes", "</s>"]
    _, labels = encode_conversation(tok, [{"from": "human", "value": "what"}], num_image_tokens=K)
    assert (labels == IGNORE_INDEX).all()


def test_role_content_turns_accepted_and_bad_turns_rejected():
    assert to_messages([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]
    for bad in ([], "text", [{"from": "bot", "value": "x"}], [{"from": "human", "value": 3}], ["x"]):
        with pytest.raises(ValueError):
            to_messages(bad)


class _SlowProxy:
    """The tokenizer seen as a slow one (no offsets), to exercise the piecewise fallback."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, text, **kw):
        return self._tok(text, **kw)


@pytest.mark.parametrize("chat", [False, True])
def test_slow_tokenizer_fallback_matches_fast(chat):
    tok = make_tokenizer(chat=chat)
    fast = ConversationTemplate(tok, num_image_tokens=K).encode(CONV)
    slow = ConversationTemplate(_SlowProxy(tok), num_image_tokens=K).encode(CONV)
    assert all(torch.equal(a, b) for a, b in zip(fast, slow))


def test_ensure_special_tokens_adds_image_and_pad():
    tok = make_tokenizer(image_token=False, pad=False)
    with pytest.raises(ValueError, match="ensure_special_tokens"):
        image_token_id(tok)
    n = len(tok)
    tid = ensure_special_tokens(tok)
    assert len(tok) == n + 1 and tid == n and tok.convert_ids_to_tokens(tid) == "<image>"
    assert tok.pad_token == "</s>" and "<image>" in tok.all_special_tokens
    assert tok("a <image> b", add_special_tokens=False)["input_ids"][1] == tid  # one token, never split
    assert ensure_special_tokens(tok) == tid and len(tok) == n + 1  # idempotent


def test_ensure_special_tokens_keeps_existing(tok):
    n, pad = len(tok), tok.pad_token
    assert ensure_special_tokens(tok) == tok.convert_tokens_to_ids("<image>") and len(tok) == n
    assert tok.pad_token == pad == "<pad>"
