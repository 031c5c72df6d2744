"""Converters between the sharegpt tool rows (:mod:`.format`) and OpenAI / Qwen-Hermes messages.

- OpenAI: ``{"messages": [...], "tools": [{"type": "function", "function": {...}}]}``; an assistant
  message's ``tool_calls[i].function.arguments`` is a JSON *string* (parsed here, dumped once on
  the way back, never double-encoded); ``tool`` messages answer the calls in call order. Content
  may be a string or a list of ``text`` / ``image_url`` parts: each image part is an ``<image>``
  placeholder and its URL an entry of the row's ``image`` list. Ids that are not ``call_<n>`` (n:
  the call's index in the row) are kept on the call, so both directions round-trip exactly.
  An assistant message with both text and tool calls has no sharegpt turn and raises.
- Hermes (Qwen2.5): tools as JSON lines inside ``<tools>...</tools>`` in the system message, calls
  as ``<tool_call>\\n{json}\\n</tool_call>`` in the assistant text, results as
  ``<tool_response>\\n...\\n</tool_response>`` blocks of one user message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mage_fast.toolcall.format import (
    CALL_ROLE,
    IMAGE_TOKEN,
    OBS_ROLE,
    Call,
    RowError,
    calls_value,
    load_tools,
    parse_calls,
    role_of,
)

_SG_ROLE = {"system": "system", "user": "human", "assistant": "gpt", "tool": OBS_ROLE}
_CALL_RE = re.compile(r"<\s*tool_call\s*>(.*?)<\s*/\s*tool_call\s*>", re.S)
_RESP_RE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.S)


# ---- markup ----------------------------------------------------------------------------------
def _dumps(obj: Any) -> str:
    """Compact JSON (no spaces after separators): fewer tokens for a word-level tokenizer."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def tools_block(tools: Sequence[Mapping[str, Any]]) -> str:
    """``<tools>`` + one JSON schema per line + ``</tools>``."""
    return "<tools>\n" + "\n".join(_dumps(dict(t)) for t in tools) + "\n</tools>"


def calls_markup(calls: Sequence[Call]) -> str:
    """Calls → ``<tool_call>\\n{"name", "arguments"}\\n</tool_call>`` blocks, one per line."""
    body = (_dumps({"name": c.name, "arguments": c.arguments}) for c in calls)
    return "\n".join(f"<tool_call>\n{b}\n</tool_call>" for b in body)


def response_markup(text: str) -> str:
    return f"<tool_response>\n{text}\n</tool_response>"


def _strip_strings(x: Any) -> Any:
    if isinstance(x, str):
        return x.strip()
    if isinstance(x, list):
        return [_strip_strings(v) for v in x]
    if isinstance(x, dict):
        return {k.strip(): _strip_strings(v) for k, v in x.items()}
    return x


def parse_markup(text: str, strip: bool = False) -> tuple[str, list[Call]]:
    """Assistant text → (text outside the call blocks, calls). ``strip`` trims every JSON key and
    string: a word-level tokenizer decodes with a space between all tokens (``" red "``).
    RowError("tool_arguments") when a block is not a JSON call."""
    calls = []
    for body in _CALL_RE.findall(text):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            raise RowError("tool_arguments", f"a <tool_call> block is not JSON: {e}: {body.strip()[:80]!r}") from e
        calls.extend(parse_calls([_strip_strings(obj) if strip else obj]))
    return _CALL_RE.sub("", text).strip(), calls


# ---- OpenAI ----------------------------------------------------------------------------------
def _parts_to_text(content: Any, images: list[str]) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for p in content:
        if p.get("type") == "text":
            out.append(p["text"])
        elif p.get("type") == "image_url":
            url = p["image_url"]
            images.append(url["url"] if isinstance(url, Mapping) else url)
            out.append(IMAGE_TOKEN)
        else:
            raise ValueError(f"unsupported content part {p.get('type')!r}")
    return "".join(out)


def _text_to_parts(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    if IMAGE_TOKEN not in text:
        return text
    parts: list[dict[str, Any]] = []
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            parts.append({"type": "image_url", "image_url": {"url": images.pop(0)}})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _openai_call(tc: Mapping[str, Any], n: int) -> Call:
    fn = tc.get("function") or {}
    (call,) = parse_calls({"name": fn.get("name"), "arguments": fn.get("arguments", "{}")})
    cid = tc.get("id")
    return Call(call.name, call.arguments, None if cid in (None, f"call_{n}") else str(cid))


def from_openai(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] = (), **extra: Any) -> dict[str, Any]:
    """OpenAI chat messages (+ tools) → a sharegpt tool row; ``extra`` keys (``id``, ...) are copied."""
    images: list[str] = []
    turns, ids, answered = [], [], 0
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            if m.get("content"):
                raise ValueError("an assistant message with text and tool_calls has no sharegpt turn")
            calls = [_openai_call(tc, len(ids) + k) for k, tc in enumerate(m["tool_calls"])]
            ids += [c.id or f"call_{len(ids) + k}" for k, c in enumerate(calls)]
            turns.append({"from": CALL_ROLE, "value": calls_value(calls)})
            continue
        if role == "tool":
            want = ids[answered] if answered < len(ids) else None
            if m.get("tool_call_id") not in (None, want):
                raise ValueError(f"tool message answers {m['tool_call_id']!r}, expected {want!r} (call order)")
            answered += 1
        if role not in _SG_ROLE:
            raise ValueError(f"unsupported OpenAI role {role!r}")
        turns.append({"from": _SG_ROLE[role], "value": _parts_to_text(m.get("content"), images)})
    row = {**extra, "conversations": turns}
    if tools:
        row["tools"] = load_tools(list(tools))
    if images:
        row["image"] = images
    return row


def to_openai(row: Mapping[str, Any]) -> dict[str, Any]:
    """A sharegpt tool row → ``{"messages", "tools"}`` (OpenAI chat format)."""
    images = row.get("image", [])
    images = [images] if isinstance(images, str) else list(images)
    messages, ids = [], []
    back = {v: k for k, v in _SG_ROLE.items()} | {"user": "user", "assistant": "assistant"}
    for t in row["conversations"]:
        role, value = role_of(t), t.get("value", t.get("content"))
        if role == CALL_ROLE:
            tcs = []
            for c in parse_calls(value):
                cid = c.id or f"call_{len(ids)}"
                ids.append(cid)
                tcs.append(
                    {
                        "id": cid,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
                    }
                )
            messages.append({"role": "assistant", "content": None, "tool_calls": tcs})
            continue
        m: dict[str, Any] = {"role": back[role], "content": _text_to_parts(value, images)}
        if role == OBS_ROLE:
            m["tool_call_id"] = ids[sum(x["role"] == "tool" for x in messages)]
        messages.append(m)
    return {"messages": messages, "tools": [{"type": "function", "function": t} for t in load_tools(row.get("tools"))]}


# ---- Hermes / Qwen ---------------------------------------------------------------------------
def to_hermes(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """A sharegpt tool row → Qwen/Hermes ``{"role", "content"}`` messages (markup in the text)."""
    tools, out = load_tools(row.get("tools")), []
    for t in row["conversations"]:
        role, value = role_of(t), t.get("value", t.get("content"))
        if role == CALL_ROLE:
            out.append({"role": "assistant", "content": calls_markup(parse_calls(value))})
        elif role == OBS_ROLE:
            if out and out[-1].get("_obs"):
                out[-1]["content"] += "\n" + response_markup(value)
            else:
                out.append({"role": "user", "content": response_markup(value), "_obs": True})
        else:
            out.append({"role": {"human": "user", "gpt": "assistant"}.get(role, role), "content": value})
    if tools:
        if out and out[0]["role"] == "system":
            out[0]["content"] = tools_block(tools) + "\n\n" + out[0]["content"]
        else:
            out.insert(0, {"role": "system", "content": tools_block(tools)})
    return [{"role": m["role"], "content": m["content"]} for m in out]


def _hermes_tools(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """System text → (tools, the system text without the tools block, None if nothing is left)."""
    if not text.startswith("<tools>\n") or "\n</tools>" not in text:
        return [], text
    body, rest = text[len("<tools>\n") :].split("\n</tools>", 1)
    tools = [json.loads(line) for line in body.split("\n") if line.strip()]
    return tools, (rest[2:] if rest.startswith("\n\n") else rest) or None


def from_hermes(messages: Sequence[Mapping[str, str]], **extra: Any) -> dict[str, Any]:
    """Qwen/Hermes messages → a sharegpt tool row (the inverse of :func:`to_hermes`)."""
    turns, tools = [], []
    for i, m in enumerate(messages):
        role, text = m["role"], m["content"]
        if role == "system" and i == 0:
            tools, text = _hermes_tools(text)
            if text is not None:
                turns.append({"from": "system", "value": text})
        elif role == "assistant" and _CALL_RE.search(text):
            rest, calls = parse_markup(text)
            if rest:
                raise ValueError("an assistant message with text and tool calls has no sharegpt turn")
            turns.append({"from": CALL_ROLE, "value": calls_value(calls)})
        elif role == "user" and text.startswith("<tool_response>\n") and not _RESP_RE.sub("", text).strip():
            turns.extend({"from": OBS_ROLE, "value": v} for v in _RESP_RE.findall(text))
        else:
            turns.append({"from": _SG_ROLE[role], "value": text})
    row = {**extra, "conversations": turns}
    if tools:
        row["tools"] = tools
    return row
