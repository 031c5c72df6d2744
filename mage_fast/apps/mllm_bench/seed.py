"""SEED-Bench: the JSON + image folder, accuracy per evaluation dimension.

``DATA`` is SEED-Bench.json: ``{"question_type": {name: id}, "questions": [{question_id, question,
choice_a..choice_d, answer, data_id, data_type, question_type_id}]}``. Dimension names come from the
file's own ``question_type`` mapping (third-party copies swap ids 3 and 4; the file is the
authority). Only ``data_type == "image"`` questions are read (dimensions 1-9); images are
``IMAGE_ROOT/<data_id>`` (default root: the JSON's folder, then its ``SEED-Bench-image/``).

Two modes: generation (the letter extracted from the answer, LLaVA-1.5's prompt) and likelihood
(:func:`mage_fast.apps.mllm_bench.runner.rank_choices` scores each option as the answer and picks the most
likely, as the official evaluation does); both write the chosen text to the answers file.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from mage_fast.apps.mllm_bench.common import LETTERS, OPTION_LETTER, Question, judge, option_block, percent, user_turn

IMAGE_DIMENSIONS = range(1, 10)


def _image_root(data: str, image_root: str | None) -> str:
    if image_root:
        return image_root
    base = os.path.dirname(os.path.abspath(data))
    sub = os.path.join(base, "SEED-Bench-image")
    return sub if os.path.isdir(sub) else base


def load(data: str, image_root: str | None = None) -> tuple[list[Question], dict[int, str]]:
    """(image questions, dimension id → name from the file's ``question_type``)."""
    with open(data, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or "questions" not in doc or "question_type" not in doc:
        raise ValueError(f"SEED-Bench {data}: expected an object with question_type and questions")
    names = {int(i): n for n, i in doc["question_type"].items()}
    root = _image_root(data, image_root)
    out = []
    for q in doc["questions"]:
        dim = int(q["question_type_id"])
        if q.get("data_type", "image") != "image" or dim not in IMAGE_DIMENSIONS:
            continue
        if dim not in names:
            raise ValueError(f"SEED-Bench {data}: question {q['question_id']}: dimension {dim} not in question_type")
        choices = [q[f"choice_{c.lower()}"] for c in LETTERS]
        prompt = user_turn(option_block(q["question"], choices), OPTION_LETTER)
        meta = {"dimension": dim, "question": q["question"]}
        out.append(
            Question(str(q["question_id"]), os.path.join(root, q["data_id"]), prompt, q["answer"], choices, meta)
        )
    if not out:
        raise ValueError(f"SEED-Bench {data}: no image questions (data_type 'image', dimensions 1-9)")
    return out, names


def score(questions: list[Question], answers: dict[str, str], names: dict[int, str]) -> dict:
    """Accuracy (percent) per dimension name and over all image questions; unanswered is wrong."""
    hits: dict[int, list[bool]] = defaultdict(list)
    oks, unparsed, missing = judge(questions, answers)
    for q, ok in zip(questions, oks):
        hits[q.meta["dimension"]].append(ok)
    dims = {names[d]: percent(sum(v), len(v)) for d, v in sorted(hits.items())}
    flat = [x for v in hits.values() for x in v]
    return {"dimensions": dims, "overall": percent(sum(flat), len(flat)), "questions": len(flat),
            "unparsed": unparsed, "missing": missing}  # fmt: skip


def report(result: dict) -> str:
    lines = [f"{'dimension':<28} {'acc':>7}"]
    lines += [f"{d:<28} {v:>7.2f}" for d, v in result["dimensions"].items()]
    lines.append(
        f"image overall {result['overall']:.2f} ({result['questions']} questions, unparsed {result['unparsed']})"
    )
    return "\n".join(lines)
