"""The held-out eval CLI answers the same whatever the batch size (batches hold prompts of one
length, no padding), and its metrics JSON records how they were made."""

from __future__ import annotations

import json
import os
from collections import Counter

from mage_fast.apps.eval import evaluate
from mage_fast.provenance import sha256_file


def _texts(path: str) -> dict[str, str]:
    with open(path) as f:
        return {r["question_id"]: r["text"] for r in map(json.loads, f)}


def test_batch_size_1_and_8_give_identical_answers(tiny_export, shapes_dir, tmp_path) -> None:
    data = os.path.join(shapes_dir, "eval.json")
    one = evaluate(tiny_export, data, str(tmp_path / "one.jsonl"), batch_size=1, max_new_tokens=6)
    eight = evaluate(tiny_export, data, str(tmp_path / "eight.jsonl"), batch_size=8, max_new_tokens=6)
    a, b = _texts(str(tmp_path / "one.jsonl")), _texts(str(tmp_path / "eight.jsonl"))
    with open(data) as f:
        rows = json.load(f)
    lengths = Counter(len(r["conversations"][-2]["value"].split()) for r in rows)
    print(len(a), "answers; prompt word counts", lengths, "first answers", list(a.values())[:3])
    assert len(a) == len(rows) >= 8 and max(lengths.values()) > 1  # some batches hold several rows
    assert a == b and len(set(a.values())) > 1  # a random model says different things to different rows
    assert one["accuracy"] == eight["accuracy"]
    made = eight["made_with"]
    assert made["data"]["sha256"] == sha256_file(data) and made["decoding"]["batch_size"] == 8
    assert made["decoding"]["max_new_tokens"] == 6 and made["template"] == "default" and made["project"]["mage_fast"]
    with open(str(tmp_path / "eight_metrics.json")) as f:
        assert json.load(f)["made_with"] == json.loads(json.dumps(made))
