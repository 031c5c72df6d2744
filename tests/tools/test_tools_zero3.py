"""A real 2-rank DeepSpeed ZeRO-3 run (CPU, gloo) on mixed tool / plain image / text-only rows."""

from __future__ import annotations

import json
import math
import os

import pytest
from launchutil import TINY, launch, run_summary

from mage_fast.shapes.tool_tasks import generate_tools

pytestmark = pytest.mark.slow


def test_two_rank_zero3_trains_on_mixed_tool_plain_and_text_rows(shapes_dir, tmp_path) -> None:
    root = str(tmp_path / "mix")
    generate_tools(root, n=24, seed=3)
    tool_rows = json.load(open(os.path.join(root, "train.json")))
    plain = json.load(open(os.path.join(shapes_dir, "stage2.json")))[:16]
    for r in plain:  # absolute: resolves outside the mixed root
        r["image"] = os.path.join(shapes_dir, r["image"])
    text = [{"id": f"text{i}", "conversations": [{"from": "human", "value": "how many shapes are there ?"},
                                                  {"from": "gpt", "value": "two"}]} for i in range(8)]  # fmt: skip
    bad = {**tool_rows[0], "id": "bad-tool", "conversations": [
        tool_rows[0]["conversations"][0], {"from": "function_call", "value": '{"name": "fly", "arguments": {}}'},
        {"from": "observation", "value": "x"}, {"from": "gpt", "value": "done ."}], "image": tool_rows[0]["image"][:-1]}  # fmt: skip
    if "<image>" not in bad["conversations"][0]["value"]:
        bad["image"] = []
    rows = tool_rows + plain + text + [bad]
    with open(os.path.join(root, "mixed.json"), "w") as f:
        json.dump(rows, f)
    run = str(tmp_path / "run")
    args = [f"run_dir={run}", f"data.root={root}", f"model.tokenizer={shapes_dir}/tokenizer", *TINY]
    args = [a for a in args if not a.startswith("data.")] + [f"data.root={root}", "data.train=mixed.json",
            "data.max_length=512", "max_steps=6", "export=false", "micro_batch_size=4"]  # fmt: skip
    p = launch(args, timeout=400)
    s = run_summary(run)
    print(s["data"], [round(h["ce"], 3) for h in s["history"]])
    assert s["world_size"] == 2 and s["zero_stage"] == 3 and s["step"] == 6
    assert f"kept {len(rows) - 1}/{len(rows)}" in s["data"] and "unknown_tool=1" in s["data"]
    assert all(math.isfinite(h["ce"]) for h in s["history"]) and "unknown_tool" in p.stdout
    assert s["history"][-1]["ce"] < s["history"][0]["ce"]  # measured: 4.58 -> 4.17 in 6 steps
