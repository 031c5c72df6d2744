"""Caption scores: VQA normalisation, hand-checked BLEU-4 / ROUGE-L / CIDEr-D values, the CLI."""

from __future__ import annotations

import json
import math

import pytest

from mage_fast import score
from mage_fast.score import caption_scores, normalize


def test_normalize_vqa_rules():
    assert normalize("A Red circle, at top-left.") == "red circle at top left"
    assert normalize("Two shapes ; the 3.5 one") == "2 shapes 3.5 1"
    assert normalize("  THE end ") == "end"


def test_perfect_match_scores_the_maxima():
    refs = {"1": ["red circle at top left"], "2": ["blue square moves down right"]}
    got = caption_scores({"1": "red circle at top left", "2": "blue square moves down right"}, refs)
    print(got)
    assert got["BLEU-4"] == pytest.approx(100, abs=1e-6)
    assert got["ROUGE-L"] == pytest.approx(100, abs=1e-6)
    # CIDEr-D: cosine 1 on each n-gram order, no length penalty, times 10, times 100.
    assert got["CIDEr-D"] == pytest.approx(1000, abs=1e-6)


def test_bleu4_by_hand():
    # precisions 4/5, 3/4, 2/3, 1/2, equal lengths: BLEU = (0.2)^(1/4)
    got = caption_scores({"x": "w x y z v"}, {"x": ["w x y z u"]})
    assert got["BLEU-4"] == pytest.approx(100 * 0.2**0.25, abs=1e-6)
    # every n-gram right, 4 words against 8: brevity penalty exp(1 - 8/4)
    got = caption_scores({"x": "w x y z"}, {"x": ["w x y z u v q r"]})
    assert got["BLEU-4"] == pytest.approx(100 * math.exp(-1), abs=1e-6)


def _rouge_l(p: float, r: float, beta: float = 1.2) -> float:
    return 100 * (1 + beta**2) * p * r / (r + beta**2 * p)


def test_rouge_l_by_hand_single_and_multiple_references():
    # LCS("red circle left", "red square left top") = 2: P = 2/3, R = 2/4
    got = caption_scores({"x": "red circle left"}, {"x": ["red square left top"]})
    assert got["ROUGE-L"] == pytest.approx(_rouge_l(2 / 3, 1 / 2), abs=1e-6)
    # several references: the best precision and the best recall over them
    got = caption_scores({"x": "red circle left"}, {"x": ["red square left top", "red circle"]})
    assert got["ROUGE-L"] == pytest.approx(_rouge_l(2 / 3, 1.0), abs=1e-6)


def test_cider_d_by_hand():
    # disjoint vocabularies: every n-gram has idf log 2; item 1 cosine 1 per order, item 2 none
    refs = {"1": ["red circle at top left"], "2": ["blue square moves down right"]}
    got = caption_scores({"1": "red circle at top left", "2": "green star spins up"}, refs)
    assert got["CIDEr-D"] == pytest.approx(100 * (10 + 0) / 2, abs=1e-6)


def test_mismatched_ids_raise():
    with pytest.raises(ValueError, match="missing"):
        caption_scores({"1": "a"}, {"1": ["a"], "2": ["b"]})


def test_cli_table_per_task(tmp_path, capsys):
    refs = [
        {"id": "g1", "task": "group", "refs": ["red circle at top left", "red circle"]},
        {"id": "g2", "task": "group", "output": "blue square moves down right"},
        {"id": "c1", "task": "change", "conversations": [{"from": "human", "value": "<image>"},
                                                          {"from": "gpt", "value": "green star spins up"}]},
    ]  # fmt: skip
    preds = [
        {"question_id": "g1", "text": "red circle at top left"},
        {"question_id": "g2", "text": "blue square moves down right"},
        {"question_id": "c1", "text": "green star spins up"},
    ]
    (tmp_path / "r.json").write_text(json.dumps(refs))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in preds))
    score.main(["captions", "--pred", str(tmp_path / "p.jsonl"), "--ref", str(tmp_path / "r.json"),
                "--json", str(tmp_path / "t.json")])  # fmt: skip
    out = capsys.readouterr().out
    print(out)
    assert out.splitlines()[0].split() == ["task", "n", "BLEU-4", "ROUGE-L", "CIDEr-D"]
    table = json.loads((tmp_path / "t.json").read_text())
    assert set(table) == {"group", "change", "all"} and table["group"]["n"] == 2
    assert table["group"]["BLEU-4"] == pytest.approx(100, abs=1e-6)
    # {id: text} predictions are read too
    (tmp_path / "p.json").write_text(json.dumps({p["question_id"]: p["text"] for p in preds}))
    assert score.load_predictions(str(tmp_path / "p.json"))["c1"] == "green star spins up"


def test_scorers_start_no_process(monkeypatch):
    """pycocoevalcap's PTB tokenizer, METEOR and SPICE run Java in a child process; these do not."""
    import subprocess

    def boom(*a, **k):
        raise AssertionError(f"a scorer started a process: {a}")

    monkeypatch.setattr(subprocess, "Popen", boom)
    assert caption_scores({"x": "red circle at top"}, {"x": ["red circle at top"]})["ROUGE-L"] > 99
