"""Tool rows: OpenAI / Hermes converters round-trip exactly; the validator names each bad row."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from testutil import ROOT

from mage_fast.apps.tools.validate import validate_rows
from mage_fast.toolcall.convert import from_hermes, from_openai, parse_markup, to_hermes, to_openai
from mage_fast.toolcall.format import Call, RowError, check_row, parse_calls

WEATHER = {"name": "weather", "description": "weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                          "required": ["city"]}}  # fmt: skip
PAINT = {"name": "paint", "parameters": {"type": "object", "properties": {"colour": {"enum": ["red", "blue"]}}}}


def tool_row() -> dict:
    """Parallel calls, an image in a human turn and one in an observation, a system turn."""
    calls = [
        {"name": "weather", "arguments": {"city": "Paris", "days": 2}},
        {"name": "paint", "arguments": {"colour": "red"}},
    ]
    return {
        "id": "r1", "image": ["in.png", "out.png"], "tools": [WEATHER, PAINT],
        "conversations": [
            {"from": "system", "value": "be brief ."},
            {"from": "human", "value": "<image>\nweather in Paris , and paint it red ."},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": '{"sky": "sunny"}'},
            {"from": "observation", "value": "<image>"},
            {"from": "gpt", "value": "sunny ; painted ."},
            {"from": "human", "value": "thanks"},
            {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Rome"}})},
            {"from": "observation", "value": "rain"},
            {"from": "gpt", "value": "rain in Rome ."},
        ],
    }  # fmt: skip


def test_sharegpt_openai_sharegpt_is_exact() -> None:
    row = tool_row()
    check_row(row)
    oa = to_openai(row)
    tc = oa["messages"][2]["tool_calls"]
    assert isinstance(tc[0]["function"]["arguments"], str)  # a JSON string, encoded once
    assert json.loads(tc[0]["function"]["arguments"]) == {"city": "Paris", "days": 2}
    assert oa["messages"][1]["content"][0] == {"type": "image_url", "image_url": {"url": "in.png"}}
    assert oa["messages"][4] == {"role": "tool", "content": [{"type": "image_url", "image_url": {"url": "out.png"}}],
                                 "tool_call_id": "call_1"}  # fmt: skip
    assert oa["tools"][0] == {"type": "function", "function": WEATHER}
    back = from_openai(oa["messages"], oa["tools"], id="r1")
    assert back == {**row, "conversations": back["conversations"]} and back["conversations"] == row["conversations"]


def test_openai_sharegpt_openai_is_exact_and_keeps_ids() -> None:
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "look "}, {"type": "image_url", "image_url": {"url": "a.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "xyz", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "content": "snow", "tool_call_id": "xyz"},
        {"role": "assistant", "content": "snow ."},
    ]  # fmt: skip
    tools = [{"type": "function", "function": WEATHER}]
    row = from_openai(msgs, tools, id="o1")
    assert parse_calls(row["conversations"][1]["value"]) == [Call("weather", {"city": "Oslo"}, "xyz")]
    assert row["image"] == ["a.png"] and row["conversations"][0]["value"] == "look <image>"
    check_row(row)
    assert to_openai(row) == {"messages": msgs, "tools": tools}
    with pytest.raises(ValueError, match="call order"):
        from_openai(msgs[:2] + [{**msgs[2], "tool_call_id": "other"}] + msgs[3:], tools)


def test_hermes_round_trip_and_markup() -> None:
    row = tool_row()
    msgs = to_hermes(row)
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith("<tools>\n{")
    assert msgs[2]["content"].count("<tool_call>\n") == 2
    assert msgs[3] == {"role": "user", "content": '<tool_response>\n{"sky": "sunny"}\n</tool_response>\n'
                                                 "<tool_response>\n<image>\n</tool_response>"}  # fmt: skip
    back = from_hermes(msgs, id="r1", image=row["image"])
    assert back["conversations"] == row["conversations"] and back["tools"] == row["tools"]
    # a word-level tokenizer's decode: spaces between all tokens
    text, calls = parse_markup(
        '< tool_call > {" name ":" paint "," arguments ":{" colour ":" red "}} </ tool_call >', strip=True
    )
    assert text == "" and calls == [Call("paint", {"colour": "red"})]
    with pytest.raises(RowError) as e:
        parse_markup("<tool_call>\n{not json\n</tool_call>")
    assert e.value.reason == "tool_arguments"


def _bad(reason: str, **change) -> dict:
    row = tool_row()
    turns = row["conversations"]
    for k, v in change.items():
        if k == "turns":
            row["conversations"] = v(turns)
        else:
            row[k] = v
    return {**row, "id": reason}


BAD_ROWS = [
    ("tool_arguments", {"turns": lambda t: t[:2] + [{"from": "function_call", "value": '{"name": "paint", "arguments": "red"}'}] + t[4:]}),
    ("tool_arguments", {"turns": lambda t: t[:7] + [{"from": "function_call", "value": "{oops"}] + t[8:]}),
    ("unknown_tool", {"turns": lambda t: t[:7] + [{"from": "function_call", "value": '{"name": "fly", "arguments": {}}'}] + t[8:]}),
    ("tool_schema", {"turns": lambda t: t[:7] + [{"from": "function_call", "value": '{"name": "weather", "arguments": {"days": 1}}'}] + t[8:]}),
    ("tool_schema", {"turns": lambda t: t[:2] + [{"from": "function_call", "value": '[{"name": "weather", "arguments": {"city": "a"}}, {"name": "paint", "arguments": {"colour": "green"}}]'}] + t[3:]}),
    ("role_order", {"turns": lambda t: t[:5] + t[6:]}),  # human right after an observation
    ("role_order", {"turns": lambda t: t[:4] + t[5:]}),  # one observation for two calls
    ("role_order", {"turns": lambda t: t[:-1]}),  # ends with an observation
    ("orphan_observation", {"turns": lambda t: t[:6] + [{"from": "observation", "value": "x"}] + t[6:]}),
    ("orphan_observation", {"turns": lambda t: t[:2] + [{"from": "observation", "value": "x"}] + t[2:]}),
    ("placeholder_mismatch", {"image": ["in.png"]}),
    ("placeholder_mismatch", {"turns": lambda t: t[:5] + [{"from": "gpt", "value": "<image>"}] + t[6:]}),
]  # fmt: skip


@pytest.mark.parametrize("reason,change", BAD_ROWS, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD_ROWS)])
def test_validator_reason_per_kind_of_bad_row(reason: str, change: dict) -> None:
    row = _bad(reason, **copy.deepcopy(change))
    assert validate_rows([tool_row(), row]) == [(reason, reason, validate_rows([row])[0][2])]


def test_validate_cli_lists_ids_and_exits_1(tmp_path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.jsonl"
    good.write_text(json.dumps([tool_row()]))
    bad.write_text("\n".join(json.dumps(_bad(r, **c)) for r, c in BAD_ROWS[:4]) + "\n{broken\n")
    run = [sys.executable, "-m", "mage_fast.apps.tools.validate"]
    ok = subprocess.run(run + [str(good)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "1 rows, 0 bad" in ok.stdout
    no = subprocess.run(run + [str(good), str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert no.returncode == 1, no.stdout + no.stderr
    lines = no.stdout.splitlines()
    assert f"{bad}: tool_arguments: tool_arguments: " in lines[0] and f"{bad}: unknown_tool: unknown_tool: " in lines[2]
    assert f"{bad}: line 5: malformed:" in lines[4]
    assert lines[-1] == "6 rows, 5 bad: malformed=1 tool_arguments=2 tool_schema=1 unknown_tool=1"
