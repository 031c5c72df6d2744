"""The tool-calling row format: LLaVA ``conversations`` with LLaMA-Factory's sharegpt tool roles.

A row::

    {"id": "r1", "image": ["in.png", "out.png"],
     "tools": [{"name": "edit_scene", "description": "...", "parameters": {JSON schema}}],
     "conversations": [
       {"from": "human", "value": "<image>\\nmake the red circle blue ."},
       {"from": "function_call", "value": "{\\"name\\": \\"edit_scene\\", \\"arguments\\": {...}}"},
       {"from": "observation", "value": "<image>"},
       {"from": "gpt", "value": "done ."}]}

- ``function_call``: one call ``{"name", "arguments"}`` or a list of them (parallel calls), as a
  JSON string (LLaMA-Factory) or as the object itself; ``arguments`` is a JSON object. An optional
  ``"id"`` per call keeps OpenAI's ``tool_call_id`` through a round trip.
- ``observation``: a tool's result, a string. A call turn with k calls is followed by k
  observation turns, in call order (as OpenAI's ``tool`` messages). Images a tool returns are
  ``<image>`` placeholders of the observation, so ``image`` lists the images of every turn in order.
- ``tools``: a list of ``{"name", "description", "parameters"}`` (OpenAI's
  ``{"type": "function", "function": {...}}`` wrapper and a JSON string are accepted).
- Order: an optional system turn, then human; human is followed by gpt or function_call; gpt by
  human; the row ends with gpt or function_call (an assistant turn to learn).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

IMAGE_TOKEN = "<image>"
CALL_ROLE, OBS_ROLE = "function_call", "observation"
USER_ROLES, ASSISTANT_ROLES = ("human", "user"), ("gpt", "assistant")
# Skip-and-count reasons of tool rows (the dataset's REASONS include them; the validator reports them).
TOOL_REASONS = ("tool_arguments", "unknown_tool", "tool_schema", "role_order", "orphan_observation")


class RowError(ValueError):
    """A bad row: ``reason`` (one of :data:`TOOL_REASONS`, ``malformed`` or
    ``placeholder_mismatch``) and a human-readable detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Call:
    """One tool call: ``arguments`` is the parsed JSON object, never a string."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "arguments": self.arguments}
        if self.id is not None:
            d["id"] = self.id
        return d


def _call(obj: Any) -> Call:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise RowError("tool_arguments", f"a call must be an object with a non-empty name, got {obj!r:.80}")
    args = obj.get("arguments", {})
    if isinstance(args, str):  # OpenAI style: a JSON string inside the call
        try:
            args = json.loads(args)
        except json.JSONDecodeError as e:
            raise RowError("tool_arguments", f"{obj['name']}: arguments are not JSON: {e}") from e
    if not isinstance(args, dict):
        raise RowError("tool_arguments", f"{obj['name']}: arguments must be a JSON object, got {type(args).__name__}")
    cid = obj.get("id")
    return Call(obj["name"], args, None if cid is None else str(cid))


def parse_calls(value: Any) -> list[Call]:
    """A ``function_call`` value (JSON string, object or list) → calls; RowError("tool_arguments")."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError("tool_arguments", f"function_call value is not JSON: {e}") from e
    calls = [_call(v) for v in value] if isinstance(value, list) else [_call(value)]
    if not calls:
        raise RowError("tool_arguments", "function_call holds no call")
    return calls


def calls_value(calls: Sequence[Call]) -> str:
    """Calls → the canonical ``function_call`` value (a JSON string; a list only when parallel)."""
    objs = [c.to_json() for c in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def load_tools(value: Any) -> list[dict[str, Any]]:
    """A row's ``tools`` → list of ``{"name", "description"?, "parameters"?}``; RowError("malformed")."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError("malformed", f"tools is not JSON: {e}") from e
    if not isinstance(value, list):
        raise RowError("malformed", "tools must be a list of function schemas")
    out = []
    for t in value:
        if isinstance(t, Mapping) and t.get("type") == "function" and isinstance(t.get("function"), Mapping):
            t = t["function"]
        if not isinstance(t, Mapping) or not isinstance(t.get("name"), str):
            raise RowError("malformed", f"a tool must be an object with a name, got {t!r:.80}")
        if not isinstance(t.get("parameters", {}), Mapping):
            raise RowError("malformed", f"tool {t['name']}: parameters must be a JSON schema object")
        out.append(dict(t))
    return out


def check_calls(calls: Sequence[Call], tools: Sequence[Mapping[str, Any]]) -> None:
    """Each call names a known tool and its arguments satisfy that tool's ``parameters`` schema."""
    by_name = {t["name"]: t for t in tools}
    for c in calls:
        if c.name not in by_name:
            raise RowError("unknown_tool", f"{c.name!r} is not in the row's tools {sorted(by_name)}")
        schema = by_name[c.name].get("parameters") or {"type": "object"}
        try:
            jsonschema.validate(c.arguments, schema)
        except jsonschema.ValidationError as e:
            where = "/".join(map(str, e.absolute_path)) or "arguments"
            raise RowError("tool_schema", f"{c.name}: {where}: {e.message}") from None
        except jsonschema.SchemaError as e:
            raise RowError(
                "malformed", f"tool {c.name}: its parameters are not a valid JSON schema: {e.message}"
            ) from None


def role_of(turn: Mapping[str, Any]) -> str:
    return turn.get("from", turn.get("role"))


def is_tool_row(row: Mapping[str, Any]) -> bool:
    """A row with a ``tools`` list or a tool turn (the tool checks apply to it)."""
    turns = row.get("conversations")
    has_turns = isinstance(turns, list) and any(
        isinstance(t, Mapping) and role_of(t) in (CALL_ROLE, OBS_ROLE) for t in turns
    )
    return bool(row.get("tools")) or has_turns


def _next_state(state: str, role: str, pending: int, i: int) -> str:
    """Turn order as a small state machine; state is the kind of the previous turn."""
    if role == OBS_ROLE and pending <= 0:
        raise RowError("orphan_observation", f"turn {i}: observation with no call before it")
    if state in ("call", "obs") and pending > 0 and role != OBS_ROLE:
        raise RowError("role_order", f"turn {i}: {role} where an observation of the call must come")
    allowed = {
        "start": USER_ROLES + ("system",),
        "system": USER_ROLES,
        "user": ASSISTANT_ROLES + (CALL_ROLE,),
        "assistant": USER_ROLES,
        "call": (OBS_ROLE,),
        "obs": (OBS_ROLE,) if pending > 0 else ASSISTANT_ROLES + (CALL_ROLE,),
    }[state]
    if role not in allowed:
        raise RowError("role_order", f"turn {i}: {role} after {state}")
    if role in USER_ROLES:
        return "user"
    if role in ASSISTANT_ROLES:
        return "assistant"
    return {"system": "system", CALL_ROLE: "call", OBS_ROLE: "obs"}[role]


def check_turns(turns: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> list[list[Call]]:
    """Order, calls and observations of a tool row; returns the calls of each call turn."""
    state, pending, out = "start", 0, []
    for i, t in enumerate(turns):
        role = role_of(t)
        if role == OBS_ROLE and state == "assistant":
            raise RowError("orphan_observation", f"turn {i}: observation after an answer, with no call before it")
        state = _next_state(state, role, pending, i)
        if role == CALL_ROLE:
            calls = parse_calls(t.get("value", t.get("content")))
            check_calls(calls, tools)
            out.append(calls)
            pending = len(calls)
        elif role == OBS_ROLE:
            pending -= 1
    if state in ("user", "obs", "system", "start") or pending > 0:
        what = "an observation is missing" if pending > 0 else f"ends with {role_of(turns[-1])}"
        raise RowError("role_order", f"{what}: a row ends with a gpt or function_call turn")
    return out


def count_placeholders(turns: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(placeholders in human and observation turns, placeholders anywhere)."""
    n_in = n_all = 0
    for t in turns:
        v = t.get("value", t.get("content"))
        n = v.count(IMAGE_TOKEN) if isinstance(v, str) else 0
        n_all += n
        n_in += n if role_of(t) in USER_ROLES + (OBS_ROLE,) else 0
    return n_in, n_all


def check_row(row: Any) -> None:
    """Every check of the validator on one row; raises RowError with the first problem."""
    if not isinstance(row, Mapping):
        raise RowError("malformed", "row is not an object")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, Mapping) for t in turns):
        raise RowError("malformed", "conversations must be a non-empty list of objects")
    tools = load_tools(row.get("tools"))
    check_turns(turns, tools)
    images = row.get("image", [])
    n_img = 1 if isinstance(images, str) else len(images) if isinstance(images, list) else -1
    n_in, n_all = count_placeholders(turns)
    if n_in != n_img or n_all != n_in:
        raise RowError(
            "placeholder_mismatch", f"{n_all} {IMAGE_TOKEN} ({n_in} in human/observation turns) for {n_img} images"
        )
