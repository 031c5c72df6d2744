"""Caption scores: BLEU-4, ROUGE-L and CIDEr-D (x100), one or several references per item.

    python -m mage_fast.score captions --pred P --ref R [--json OUT]

The scorers are pycocoevalcap's pure-Python Bleu, Rouge and Cider (its CIDEr is CIDEr-D: clipped
n-gram counts and a Gaussian length penalty, sigma 6, times 10). Its PTB tokenizer, METEOR and
SPICE need Java and are not used: text is instead normalised the way the VQA evaluation does it
(:func:`normalize`) and split on spaces. CIDEr-D's idf comes from the references of the scored
set, so a task's CIDEr-D depends on which items are scored together (as in COCO).

Inputs (JSON list, JSONL or a JSON object ``{id: ...}``):
- P: rows with ``question_id`` or ``id`` and ``text`` (``mage_fast.eval``'s answers JSONL), or
  ``caption``/``output``; or ``{id: text}``.
- R: rows with ``id`` and ``refs`` (a list), ``output``/``caption`` (a string or a list), or LLaVA
  ``conversations`` (the last turn is the reference); or ``{id: text | [texts]}``. A row's ``task``
  (else ``qtype``) groups the table; every group is scored on its own, plus "all".
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from typing import Any

from mage_fast.data.llava import read_rows

METRICS = ("BLEU-4", "ROUGE-L", "CIDEr-D")
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBERS["none"] = "0"
_ARTICLES = {"a", "an", "the"}
_PUNCT = ';/[]"{}()=+\\_-><@`,?!'
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_DIGIT_COMMA = re.compile(r"\d,\d")


def normalize(text: str) -> str:
    """VQA-evaluation normalisation: punctuation dropped (glued to a word) or spaced (free
    standing), periods not inside numbers dropped, lower case, number words to digits, articles
    dropped. VQA's contraction table ("dont" → "don't") is not applied."""
    out = text
    for p in _PUNCT:
        glued = (p + " " in text or " " + p in text) or _DIGIT_COMMA.search(text) is not None
        out = out.replace(p, "" if glued else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def caption_scores(preds: dict[str, str], refs: dict[str, list[str]]) -> dict[str, float]:
    """Corpus BLEU-4, mean ROUGE-L and CIDEr-D (x100) of ``preds`` against ``refs`` (same ids)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(preds) != set(refs):
        missing, extra = sorted(set(refs) - set(preds)), sorted(set(preds) - set(refs))
        raise ValueError(f"predictions and references differ: missing {missing[:5]}, unknown {extra[:5]}")
    if not refs:
        raise ValueError("no items to score")
    res = {k: [normalize(preds[k])] for k in refs}
    gts = {k: [normalize(r) for r in v] for k, v in refs.items()}
    empty = [k for k, v in refs.items() if not v]
    if empty:
        raise ValueError(f"items without a reference: {empty[:5]}")
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {"BLEU-4": 100 * float(bleu[3]), "ROUGE-L": 100 * float(rouge), "CIDEr-D": 100 * float(cider)}


def _text(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in row:
            return row[k]
    if "conversations" in row:
        return row["conversations"][-1]["value"]
    raise ValueError(f"row {row.get('id', row.get('question_id'))!r} has none of {keys} or conversations")


def _rows(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON list / JSONL file, or ``{id: text | [texts]}`` as rows with ``refs``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = read_rows(path)
    if isinstance(obj, dict):
        obj = [obj] if {"id", "question_id"} & set(obj) else [{"id": k, "refs": v} for k, v in obj.items()]
    bad = [i for i, r in enumerate(obj) if not isinstance(r, dict)]
    if bad:
        raise ValueError(f"{path}: row {bad[0]} is not a JSON object")
    return obj


def load_predictions(path: str) -> dict[str, str]:
    """id → predicted text (see the module docstring for the formats)."""
    out = {}
    for r in _rows(path):
        t = _text(r, ("text", "caption", "output", "refs"))
        out[str(r.get("question_id", r.get("id")))] = t[0] if isinstance(t, list) else t
    return out


def load_references(path: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """(id → reference texts, id → task) (see the module docstring for the formats)."""
    refs, tasks = {}, {}
    for i, r in enumerate(_rows(path)):
        if "id" not in r:
            raise ValueError(f"{path}: reference row {i} has no id")
        sid = str(r["id"])
        t = _text(r, ("refs", "output", "caption"))
        refs[sid] = [t] if isinstance(t, str) else list(t)
        tasks[sid] = str(r.get("task", r.get("qtype", "all")))
    return refs, tasks


def scores_by_task(preds: dict[str, str], refs: dict[str, list[str]], tasks: dict[str, str]) -> dict:
    """{task: {"n", BLEU-4, ROUGE-L, CIDEr-D}}, each task scored alone, plus "all" when several."""
    groups: dict[str, list[str]] = defaultdict(list)
    for k in refs:
        groups[tasks.get(k, "all")].append(k)
    if len(groups) > 1:
        groups["all"] = list(refs)
    return {
        t: {"n": len(ks), **caption_scores({k: preds[k] for k in ks if k in preds}, {k: refs[k] for k in ks})}
        for t, ks in groups.items()
    }


def format_table(table: dict[str, dict]) -> str:
    """Fixed-width text table of :func:`scores_by_task` output."""
    lines = [f"{'task':<14} {'n':>5} " + " ".join(f"{m:>8}" for m in METRICS)]
    for t, row in table.items():
        lines.append(f"{t:<14} {row['n']:>5} " + " ".join(f"{row[m]:>8.2f}" for m in METRICS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.score", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("captions", help="BLEU-4 / ROUGE-L / CIDEr-D per task")
    c.add_argument("--pred", required=True, help="predictions (answers JSONL, rows or {id: text})")
    c.add_argument("--ref", required=True, help="references (rows or {id: text | [texts]})")
    c.add_argument("--json", default=None, help="also write the table as JSON here")
    a = p.parse_args(argv)
    try:
        refs, tasks = load_references(a.ref)
        table = scores_by_task(load_predictions(a.pred), refs, tasks)
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"mage_fast.score: {e}")
    print(format_table(table))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
