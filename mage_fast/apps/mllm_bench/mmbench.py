"""MMBench: the TSV (base64 images, options A-D), CircularEval, rule-based letter extraction.

Columns read: ``index, question, hint, A, B, C, D, answer, category, image`` (``l2-category`` is
kept in the metadata). A row whose ``image`` is a short number refers to that index's image (the
dev TSVs store rotated copies that way). Rows at ``index + k·1,000,000`` are the k-th option
rotation of question ``index``; a file without them is rotated here (``rotate=True``): rotation k
shows the options shifted left by k (LLaVA's ``--all-rounds``), the reference letter moving with
its option. A question counts only if every rotation is answered right; accuracy is overall and
per category, in percent of questions. Letters are extracted by :func:`~mage_fast.apps.mllm_bench.common.extract_letter`.
"""

from __future__ import annotations

import base64
import csv
import sys
from collections import defaultdict

from mage_fast.apps.mllm_bench.common import (
    LETTERS,
    OPTION_LETTER,
    ROTATION,
    Question,
    judge,
    option_block,
    percent,
    user_turn,
)


def _none(v: str | None) -> bool:
    return v is None or v.strip().lower() in ("", "nan", "none")


def _read(path: str) -> list[dict]:
    csv.field_size_limit(sys.maxsize)  # base64 images exceed csv's default field limit
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    need = {"index", "question", "A", "B", "answer", "image"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"MMBench {path}: columns {sorted(need - set(rows[0]))} missing")
    return rows


def _question(row: dict, choices: list[str], gt: str, index: int, image: bytes) -> Question:
    text = row["question"] if _none(row.get("hint")) else f"{row['hint']}\n{row['question']}"
    meta = {"group": str(index % ROTATION), "category": row.get("category") or "all",
            "l2_category": row.get("l2-category") or ""}  # fmt: skip
    return Question(str(index), image, user_turn(option_block(text, choices), OPTION_LETTER), gt, choices, meta)


def load(data: str, rotate: bool = True) -> list[Question]:
    """Questions of the TSV, rotations included (read from the file, or made when it has none)."""
    rows = _read(data)
    images = {r["index"]: r["image"] for r in rows if len(r["image"]) > 64}
    has_rotations = any(int(r["index"]) >= ROTATION for r in rows)
    out = []
    for r in rows:
        choices = [r[c] for c in LETTERS if not _none(r.get(c))]
        gt = r["answer"].strip()
        if gt not in LETTERS[: len(choices)]:
            raise ValueError(f"MMBench {data}: index {r['index']}: answer {gt!r} is not one of its options")
        img = images.get(r["image"], r["image"]) if len(r["image"]) <= 64 else r["image"]
        raw = base64.b64decode(img)
        index = int(r["index"])
        turns = range(len(choices)) if rotate and not has_rotations else range(1)
        for k in turns:
            rot = choices[k:] + choices[:k]
            g = LETTERS[rot.index(choices[LETTERS.index(gt)])] if k else gt
            out.append(_question(r, rot, g, index + k * ROTATION, raw))
    return out


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """CircularEval accuracy (percent of questions with every rotation right), overall and per
    category; also the single-pass accuracy of rotation 0 alone and the unparsed answer count."""
    groups: dict[str, list[bool]] = defaultdict(list)
    first: dict[str, bool] = {}
    category: dict[str, str] = {}
    oks, unparsed, missing = judge(questions, answers)
    for q, ok in zip(questions, oks):
        groups[q.meta["group"]].append(ok)
        if int(q.qid) < ROTATION:
            first[q.meta["group"]] = ok
            category[q.meta["group"]] = q.meta["category"]
    per_cat: dict[str, list[bool]] = defaultdict(list)
    for g, oks in groups.items():
        per_cat[category.get(g, "all")].append(all(oks))
    circ = [all(oks) for oks in groups.values()]
    return {"overall": percent(sum(circ), len(circ)), "questions": len(circ), "rows": len(questions),
            "categories": {c: percent(sum(v), len(v)) for c, v in sorted(per_cat.items())},
            "single_pass": percent(sum(first.values()), len(first)), "unparsed": unparsed,
            "missing": missing}  # fmt: skip


def report(result: dict) -> str:
    lines = [f"{'category':<32} {'circular acc':>12}"]
    lines += [f"{c:<32} {v:>12.2f}" for c, v in result["categories"].items()]
    lines.append(
        f"overall {result['overall']:.2f} ({result['questions']} questions, {result['rows']} rows; "
        f"rotation 0 alone {result['single_pass']:.2f}; unparsed {result['unparsed']})"
    )
    return "\n".join(lines)


__all__ = ["load", "score", "report", "ROTATION"]
