"""Caption scores: BLEU-4, ROUGE-L and CIDEr-D (x100), one or several references per item.

    python -m mage_fast.apps.caption_score captions --pred P --ref R [--rule sam|vqa] [--json OUT]

The default rule, ``sam``, is the protocol of SAM's ``evaluate_score.py`` (McCartney01/SAM):
text is normalised by :func:`sam_normalize` (newlines and tabs to spaces, the VQA punctuation
rule, surrounding quotes stripped, lower case; articles and number words are kept); ROUGE-L is
the mean over items of the ``rouge`` package's ROUGE-L F (0 for an empty prediction); BLEU-4 and
CIDEr-D are pycocoevalcap's corpus BLEU-4 and CIDEr (its CIDEr is CIDEr-D: clipped n-gram counts,
a Gaussian length penalty, sigma 6, times 10). SAM scores one reference per item; with several,
BLEU-4 and CIDEr-D use them all (as pycocoevalcap does) and ROUGE-L takes the best reference's F.
CIDEr-D's idf comes from the references of the scored set, so a task's CIDEr-D depends on which
items are scored together (as in COCO and in SAM's per-dataset scores).

``--rule vqa`` is this tool's older rule: the VQA answer normalisation (:func:`vqa_normalize`,
which also drops a/an/the and turns number words into digits) and pycocoevalcap's ROUGE-L (beta
1.2, the best precision and recall over the references). Its numbers are not comparable with
SAM's paper. No scorer here runs Java (pycocoevalcap's PTB tokenizer, METEOR and SPICE do).

Inputs (JSON list, JSONL or a JSON object ``{id: ...}``):
- P: rows with ``question_id``, ``id`` or ``sample_id`` and ``text`` (``mage_fast.apps.eval``'s answers
  JSONL), ``caption``/``output``, or ``pred_response`` (SAM's ``pred.json``); or ``{id: text}``.
- R: rows with ``id`` or ``sample_id`` and ``refs`` (a list), ``output``/``caption`` (a string or a
  list), ``gt_response`` (SAM's ``pred.json``, so one file can be both P and R), or LLaVA
  ``conversations`` (the last turn is the reference); or ``{id: text | [texts]}``. A row's ``task``
  (else ``qtype``) groups the table; every group is scored on its own, plus "all".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from typing import Any

from mage_fast.data.llava import read_rows
from mage_fast.provenance import input_record, project_version

METRICS = ("BLEU-4", "ROUGE-L", "CIDEr-D")
RULES = ("sam", "vqa")
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_DIGIT_COMMA = re.compile(r"\d,\d")
# SAM's period rule as its script writes it: "(?!<=" is a lookahead, so a period goes unless a
# digit follows, also after a digit ("3." loses its period, "3.5" keeps it).
_SAM_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# SAM's script passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go.
_SAM_PERIOD_COUNT = int(re.UNICODE)


def _vqa_punctuation(text: str) -> str:
    """VQA's punctuation rule: a mark is dropped when some mark in the text is glued to a space
    (or the text has a digit comma), else spaced; decided per mark on the original text."""
    out = text
    for p in _PUNCT:
        glued = (p + " " in text or " " + p in text) or _DIGIT_COMMA.search(text) is not None
        out = out.replace(p, "" if glued else " ")
    return out


def sam_normalize(text: str) -> str:
    """SAM's ``Eval.process``: newlines and tabs to spaces, strip, the VQA punctuation rule and
    SAM's period rule, surrounding single then double quotes stripped, strip, lower case."""
    out = text.replace("\n", " ").replace("\t", " ").strip()
    out = _SAM_PERIOD.sub("", _vqa_punctuation(out), count=_SAM_PERIOD_COUNT)
    return out.strip("'").strip('"').strip().lower()


def vqa_normalize(text: str) -> str:
    """VQA-evaluation normalisation: punctuation dropped (glued to a word) or spaced (free
    standing), periods not inside numbers dropped, lower case, number words to digits, articles
    dropped. VQA's contraction table ("dont" → "don't") is not applied."""
    out = _PERIOD.sub("", _vqa_punctuation(text))
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def _rouge_l_sam(res: dict[str, list[str]], gts: dict[str, list[str]]) -> float:
    """Mean over items of the ``rouge`` package's ROUGE-L F, the best over an item's references;
    an empty prediction scores 0 (SAM's rule)."""
    from rouge import Rouge

    rouge = Rouge(metrics=["rouge-l"])
    total = 0.0
    for k, (pred,) in res.items():
        if not pred:
            continue
        try:
            total += max(rouge.get_scores(pred, r)[0]["rouge-l"]["f"] for r in gts[k])
        except ValueError as e:  # text that is only periods leaves the package no sentence
            raise ValueError(f"item {k!r}: ROUGE-L cannot score {pred!r} against {gts[k]!r}: {e}") from None
    return total / len(res)


def _normalized(preds: dict[str, str], refs: dict[str, list[str]], rule: str) -> tuple[dict, dict]:
    """(id → [normalised prediction], id → normalised references); a reference that normalises
    to nothing raises (SAM asserts it)."""
    if rule not in RULES:
        raise ValueError(f"unknown caption rule {rule!r}: one of {RULES}")
    norm = sam_normalize if rule == "sam" else vqa_normalize
    res = {k: [norm(preds[k])] for k in refs}
    gts = {k: [norm(r) for r in v] for k, v in refs.items()}
    empty = [k for k, v in gts.items() if not v or (rule == "sam" and not all(v))]
    if empty:
        raise ValueError(f"items without a (non-empty) reference: {empty[:5]}")
    return res, gts


def caption_scores(preds: dict[str, str], refs: dict[str, list[str]], rule: str = "sam") -> dict[str, float]:
    """Corpus BLEU-4, mean ROUGE-L and CIDEr-D (x100) of ``preds`` against ``refs`` (same ids)
    under ``rule`` ("sam" or "vqa", see the module docstring)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(preds) != set(refs):
        missing, extra = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
        raise ValueError(f"predictions and references differ: missing {missing[:5]}, unknown {extra[:5]}")
    if not refs:
        raise ValueError("no items to score")
    res, gts = _normalized(preds, refs, rule)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge = _rouge_l_sam(res, gts) if rule == "sam" else Rouge().compute_score(gts, res)[0]
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": 100 * float(bleu[3]), "ROUGE-L": 100 * float(rouge), "CIDEr-D": 100 * float(cider)}


def _text(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in row:
            return row[k]
    if "conversations" in row:
        return row["conversations"][-1]["value"]
    raise ValueError(f"row {_row_id(row)!r} has none of {keys} or conversations")


def _row_id(row: dict[str, Any]) -> Any:
    for k in ("question_id", "id", "sample_id"):
        if k in row:
            return row[k]
    return None


def _rows(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON list / JSONL file, or ``{id: text | [texts]}`` as rows with ``refs``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = read_rows(path)
    if isinstance(obj, dict):
        obj = [obj] if {"id", "question_id", "sample_id"} & set(obj) else [{"id": k, "refs": v} for k, v in obj.items()]
    bad = [i for i, r in enumerate(obj) if not isinstance(r, dict)]
    if bad:
        raise ValueError(f"{path}: row {bad[0]} is not a JSON object")
    return obj


def load_predictions(path: str) -> dict[str, str]:
    """id → predicted text (see the module docstring for the formats)."""
    out = {}
    for i, r in enumerate(_rows(path)):
        if _row_id(r) is None:
            raise ValueError(f"{path}: prediction row {i} has no question_id, id or sample_id")
        t = _text(r, ("text", "pred_response", "caption", "output", "refs"))
        out[str(_row_id(r))] = t[0] if isinstance(t, list) else t
    return out


def load_references(path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(id → reference texts, id → task) (see the module docstring for the formats)."""
    refs, tasks = {}, {}
    for i, r in enumerate(_rows(path)):
        rid = r.get("id", r.get("sample_id"))
        if rid is None:
            raise ValueError(f"{path}: reference row {i} has no id or sample_id")
        t = _text(r, ("refs", "gt_response", "output", "caption"))
        refs[str(rid)] = [t] if isinstance(t, str) else list(t)
        tasks[str(rid)] = str(r.get("task", r.get("qtype", "all")))
    return refs, tasks


def scores_by_task(preds: dict[str, str], refs: dict[str, list[str]], tasks: dict[str, str], rule: str = "sam") -> dict:
    """{task: {"n", BLEU-4, ROUGE-L, CIDEr-D}}, each task scored alone, plus "all" when several."""
    groups: dict[str, list[str]] = defaultdict(list)
    for k in refs:
        groups[tasks.get(k, "all")].append(k)
    if len(groups) > 1:
        groups["all"] = list(refs)
    return {
        t: {"n": len(ks), **caption_scores({k: preds[k] for k in ks if k in preds}, {k: refs[k] for k in ks}, rule)}
        for t, ks in groups.items()
    }


def format_table(table: dict[str, dict]) -> str:
    """Fixed-width text table of :func:`scores_by_task` output."""
    lines = [f"{'task':<14} {'n':>5} " + " ".join(f"{m:>8}" for m in METRICS)]
    for t, row in table.items():
        lines.append(f"{t:<14} {row['n']:>5} " + " ".join(f"{row[m]:>8.2f}" for m in METRICS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.apps.caption_score", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("captions", help="BLEU-4 / ROUGE-L / CIDEr-D per task")
    c.add_argument("--pred", required=True, help="predictions (answers JSONL, SAM's pred.json, rows or {id: text})")
    c.add_argument("--ref", required=True, help="references (rows, SAM's pred.json or {id: text | [texts]})")
    rule_help = (
        "sam (default): SAM's evaluate_score.py (punctuation, quotes, lower case; ROUGE-L F of the rouge "
        "package). vqa: also drops a/an/the and turns number words into digits, and uses pycocoevalcap's "
        "ROUGE-L (beta 1.2); its numbers are not comparable with SAM's paper"
    )
    c.add_argument("--rule", choices=RULES, default="sam", help=rule_help)
    c.add_argument("--json", default=None, help="also write the table as JSON here")
    a = p.parse_args(argv)
    try:
        refs, tasks = load_references(a.ref)
        table = scores_by_task(load_predictions(a.pred), refs, tasks, a.rule)
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"mage_fast.apps.caption_score: {e}")
    print(format_table(table))
    if a.json:
        made = {"pred": input_record(a.pred), "ref": input_record(a.ref), "project": project_version()}
        with open(a.json + ".tmp", "w") as f:
            json.dump({"rule": a.rule, "tasks": table, "made_with": made}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
