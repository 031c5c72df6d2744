"""Conversation → (input_ids, labels), LLaVA-1.5 conventions.

The conversation is rendered to one string plus the character spans of the assistant answers
(the tokenizer's ``chat_template`` when it has one, else a built-in LLaVA-v1 style template). The
string is split on ``<image>``; each text chunk is tokenized (``add_special_tokens=False``) and a
token is labelled when it overlaps an assistant span; each placeholder becomes the image token id,
expanded to ``num_image_tokens`` copies so the model finds image positions from input_ids alone.
Tokenizing whole chunks (not turn by turn) keeps training ids identical to what
:meth:`ConversationTemplate.encode_prompt` gives at generation time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mage_fast.data.tokens import IMAGE_TOKEN, image_token_id
from mage_fast.labels import IGNORE_INDEX
from mage_fast.toolcall.convert import calls_markup, response_markup, tools_block
from mage_fast.toolcall.format import parse_calls

ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
Span = tuple[int, int]


def to_messages(turns: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """LLaVA turns ``{"from": human|gpt|system|function_call|observation, "value"}`` (or
    ``{"role", "content"}``) → ``[{"role": user|assistant|system|tool, "content"}]``; ValueError on
    anything else. A ``function_call`` turn becomes an assistant message whose content is the
    ``<tool_call>`` markup and whose ``tool_calls`` holds the parsed calls (RowError when they do
    not parse)."""
    if not isinstance(turns, Sequence) or isinstance(turns, str) or not turns:
        raise ValueError("conversations must be a non-empty list")
    out = []
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping):
            raise ValueError(f"turn {i} is not an object")
        role, content = t.get("from", t.get("role")), t.get("value", t.get("content"))
        if role == "function_call":
            calls = parse_calls(content)
            out.append({"role": "assistant", "content": calls_markup(calls), "tool_calls": calls})
            continue
        if role not in ROLES or not isinstance(content, str):
            raise ValueError(f"turn {i}: bad role {role!r} or non-string value")
        out.append({"role": ROLES[role], "content": content})
    return out


def _hf_messages(messages: list[dict[str, Any]], native: bool) -> list[dict[str, Any]]:
    """Messages for ``apply_chat_template``: with ``native`` tool support as HF expects them
    (``tool_calls`` with dict arguments, ``tool`` role), else our markup in user/assistant text."""
    out = []
    for m in messages:
        if native and m.get("tool_calls"):
            tcs = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in m["tool_calls"]
            ]
            out.append({"role": "assistant", "content": "", "tool_calls": tcs})
        elif m["role"] == "tool" and not native:
            out.append({"role": "user", "content": response_markup(m["content"])})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


class ConversationTemplate:
    """Encodes conversations for one tokenizer. ``use_chat_template=None`` picks the tokenizer's
    ``chat_template`` when set, else the built-in ``USER: ... ASSISTANT: ...</s>`` template.

    Tool rows: ``tools`` (a list of function schemas) go first, as a ``<tools>`` block in the
    system prompt; a call is an assistant answer ``<tool_call>\n{json}\n</tool_call>`` (labelled,
    with its end-of-turn token: the model learns to stop after a call); an observation is a
    ``TOOL: <tool_response>\n...\n</tool_response>`` turn (never labelled). A chat template whose
    source mentions ``tools`` gets them natively (``tools=``, ``tool_calls``, role ``tool``);
    other chat templates get the same markup inside system / user / assistant text."""

    def __init__(self, tokenizer: Any, *, num_image_tokens: int, use_chat_template: bool | None = None):
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
        self.tokenizer = tokenizer
        self.num_image_tokens = int(num_image_tokens)
        self.image_token_id = image_token_id(tokenizer)
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        self.use_chat_template = has_chat if use_chat_template is None else bool(use_chat_template)
        if self.use_chat_template and not has_chat:
            raise ValueError("use_chat_template=True but the tokenizer has no chat_template")
        self.native_tools = has_chat and "tools" in str(tokenizer.chat_template)

    # ---- rendering -------------------------------------------------------------------------
    def _chat(self, messages: list[dict[str, Any]], gen: bool, tools: list[dict] | None = None) -> str:
        msgs = _hf_messages(messages, self.native_tools)
        kw = {}
        if tools and self.native_tools:
            kw["tools"] = [{"type": "function", "function": t} for t in tools]
        elif tools:
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {"role": "system", "content": tools_block(tools) + "\n\n" + msgs[0]["content"]}
            else:
                msgs.insert(0, {"role": "system", "content": tools_block(tools)})
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)

    def render(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = False, tools: list[dict] | None = None
    ) -> tuple[str, list[Span]]:
        """Full text and the [start, end) character spans of the assistant answers and calls
        (content and end-of-turn token, trailing whitespace excluded)."""
        if self.use_chat_template:
            text = self._chat(messages, add_generation_prompt, tools)
            spans = []
            for i, m in enumerate(messages):
                if m["role"] != "assistant":
                    continue
                # the answer is what turn i adds beyond the generation prompt of the turns before it
                prefix = self._chat(messages[:i], True, tools)
                upto = self._chat(messages[: i + 1], False, tools)
                if not (upto.startswith(prefix) and text.startswith(upto)):
                    raise ValueError("chat_template is not prefix-stable; cannot locate assistant turns")
                spans.append(_rstrip_span(text, len(prefix), len(upto)))
            return text, spans
        tok = self.tokenizer
        text, spans = tok.bos_token or "", []
        if tools:
            text += tools_block(tools) + "\n"
        for m in messages:
            if m["role"] == "system":
                text += m["content"] + "\n"
            elif m["role"] == "user":
                text += f"USER: {m['content']}\n"
            elif m["role"] == "tool":
                text += f"TOOL: {response_markup(m['content'])}\n"
            else:
                text += "ASSISTANT: "
                start = len(text)
                text += m["content"] + (tok.eos_token or "")
                spans.append((start, len(text)))
                text += "\n"
        if add_generation_prompt:
            text += "ASSISTANT:"
        return text, spans

    # ---- tokenizing ------------------------------------------------------------------------
    def tokenize(self, rendered: Sequence[tuple[str, list[Span]]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Rendered ``(text, spans)`` → compact encodings ``(ids int64 (T,), label mask bool (T,))``
        with ONE image id per placeholder. Batched: a single tokenizer call for all texts, since
        per-call overhead dominates for short conversations."""
        split = [text.split(IMAGE_TOKEN) for text, _ in rendered]
        fast = getattr(self.tokenizer, "is_fast", False)
        if fast:
            enc = self.tokenizer(
                [c for chunks in split for c in chunks], add_special_tokens=False, return_offsets_mapping=True
            )
            flat = iter(zip(enc["input_ids"], enc["offset_mapping"]))
        out = []
        for (_, spans), chunks in zip(rendered, split):
            bases = np.cumsum([0] + [len(c) + len(IMAGE_TOKEN) for c in chunks[:-1]])
            ids: list[np.ndarray] = []
            offs: list[np.ndarray] = []
            for k, (chunk, base) in enumerate(zip(chunks, bases)):
                cid, off = next(flat) if fast else self._tokenize_slow(chunk, int(base), spans)
                if k:  # the placeholder between chunks k-1 and k; never labelled (offsets -1)
                    ids.append(np.array([self.image_token_id], dtype=np.int64))
                    offs.append(np.array([[-1, -1]], dtype=np.int64))
                ids.append(np.asarray(cid, dtype=np.int64))
                offs.append(np.asarray(off, dtype=np.int64).reshape(-1, 2) + base)
            tid, off = np.concatenate(ids), np.concatenate(offs)
            mask = np.zeros(len(tid), dtype=bool)
            for s, e in spans:  # a token is an answer token if it overlaps an answer span
                mask |= (off[:, 0] >= 0) & (off[:, 0] < e) & (np.maximum(off[:, 1], off[:, 0] + 1) > s)
            out.append((tid, mask))
        return out

    def _tokenize_slow(self, chunk: str, base: int, spans: list[Span]) -> tuple[list[int], list[Span]]:
        """No offsets without a fast tokenizer: cut the chunk at span edges and give each piece's
        tokens the piece's offsets."""
        cuts = sorted({0, len(chunk), *(min(max(x - base, 0), len(chunk)) for sp in spans for x in sp)})
        ids, offs = [], []
        for a, b in zip(cuts, cuts[1:]):
            piece = self.tokenizer(chunk[a:b], add_special_tokens=False)["input_ids"]
            ids += piece
            offs += [(a, b)] * len(piece)
        return ids, offs

    def encode_compact(
        self, turns: Sequence[Mapping[str, Any]], tools: list[dict] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Conversation → (ids int64 (T,), label mask bool (T,)) with one image id per image;
        :meth:`expand` turns it into model inputs. Compact so datasets can cache it cheaply."""
        return self.tokenize([self.render(to_messages(turns), tools=tools)])[0]

    def expanded_length(self, ids: np.ndarray) -> int:
        """Length of ``ids`` after image expansion."""
        return len(ids) + int((ids == self.image_token_id).sum()) * (self.num_image_tokens - 1)

    def expand(self, ids: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Compact → (input_ids (L,) long, labels (L,) long, -100 outside answers)."""
        is_img = ids == self.image_token_id
        reps = np.where(is_img, self.num_image_tokens, 1)
        ids_x, mask_x = np.repeat(ids, reps), np.repeat(mask & ~is_img, reps)
        labels = np.where(mask_x, ids_x, IGNORE_INDEX)
        return torch.from_numpy(ids_x), torch.from_numpy(labels)

    def encode(
        self, turns: Sequence[Mapping[str, Any]], tools: list[dict] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conversation → (input_ids (L,) long, labels (L,) long), images expanded."""
        return self.expand(*self.encode_compact(turns, tools))

    def encode_prompt(self, turns: Sequence[Mapping[str, Any]], tools: list[dict] | None = None) -> torch.Tensor:
        """Generation prompt: all turns so far + the assistant prefix → input_ids (L,) long, images
        expanded. The last turn must not be an assistant turn."""
        messages = to_messages(turns)
        if messages[-1]["role"] == "assistant":
            raise ValueError("encode_prompt: the last turn is an assistant answer; drop it first")
        text, _ = self.render(messages, add_generation_prompt=True, tools=tools)
        return self.expand(*self.tokenize([(text, [])])[0])[0]


def _rstrip_span(text: str, start: int, end: int) -> Span:
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def encode_conversation(
    tokenizer: Any, turns: Sequence[Mapping[str, Any]], *, num_image_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-off :meth:`ConversationTemplate.encode` → (input_ids (L,), labels (L,))."""
    return ConversationTemplate(tokenizer, num_image_tokens=num_image_tokens).encode(turns)


def encode_generation_prompt(
    tokenizer: Any, turns: Sequence[Mapping[str, Any]], *, num_image_tokens: int
) -> torch.Tensor:
    """One-off :meth:`ConversationTemplate.encode_prompt` → input_ids (L,)."""
    return ConversationTemplate(tokenizer, num_image_tokens=num_image_tokens).encode_prompt(turns)
