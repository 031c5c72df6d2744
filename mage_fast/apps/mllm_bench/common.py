"""What the three benchmarks share: the question row, LLaVA-1.5's prompt suffixes, the answers
JSONL (LLaVA's ``model_vqa`` rows), and the rule-based option-letter extraction."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"
ROTATION = 1_000_000  # MMBench: option rotation k of question i has index i + k·ROTATION
# MMBench's own answer tokenisation: these characters separate words.
_PUNCT = re.compile(r"[.()\[\],:;!*#{}]")
_ANSWER_IS = re.compile(r"(?i:answer is)[:\s]*\(?([A-D])\b")


IMAGE_FIRST = "<image>\n"


@dataclass
class Question:
    """One model query. ``qid`` is the key its answer is found under (see :func:`read_answers`);
    ``image`` is a file path or encoded image bytes; ``prompt`` is the user turn (``<image>``
    first, as LLaVA-1.5 asks); ``choices`` the option texts in letter order (empty for open
    answers); ``gt`` the reference (a letter, or yes/no); ``row_id`` the ``question_id`` its
    answers row carries when that is not ``qid`` (MME: LLaVA's image path, shared by the image's
    questions)."""

    qid: str
    image: str | bytes
    prompt: str
    gt: str
    choices: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    row_id: str | None = None


def option_block(question: str, choices: list[str]) -> str:
    """LLaVA-1.5's multiple-choice text: the question, then one ``X. option`` line per choice."""
    return question + "".join(f"\n{c}. {o}" for c, o in zip(LETTERS, choices))


def user_turn(text: str, suffix: str) -> str:
    """``<image>`` + newline + the question + newline + the answer-format instruction."""
    return f"{IMAGE_FIRST}{text}\n{suffix}"


def extract_letter(text: str, choices: list[str]) -> str | None:
    """The option letter an answer names, or None (counted wrong; no LLM judge). Rules in order:

    1. exactly one distinct option letter among the answer's words (MMBench's punctuation split),
       and it is one of the last three words ("A cat sits" names no option; "It is B." names B);
    2. "answer is X" (case-insensitive "answer is", an upper-case option letter);
    3. exactly one option whose text occurs in the answer (case-insensitive).
    """
    valid = LETTERS[: len(choices)]
    words = _PUNCT.sub(" ", text).split()
    found = {w for w in words if w in valid}
    if len(found) == 1 and next(iter(found)) in words[-3:]:
        return next(iter(found))
    m = _ANSWER_IS.search(text)
    if m and m.group(1) in valid:
        return m.group(1)
    low = text.lower()
    hits = [c for c, o in zip(valid, choices) if o.strip() and o.strip().lower() in low]
    return hits[0] if len(hits) == 1 else None


def judge(questions: list[Question], answers: dict[str, str]) -> tuple[list[bool], int, int]:
    """Per multiple-choice question whether its answer names the reference letter; and how many
    answers name no letter (unparsed) or are absent (missing). Both count wrong."""
    oks, unparsed, missing = [], 0, 0
    for q in questions:
        text = answers.get(q.qid)
        letter = extract_letter(text, q.choices) if text is not None else None
        missing += text is None
        unparsed += text is not None and letter is None
        oks.append(letter == q.gt)
    return oks, unparsed, missing


def row_key(row: dict) -> str:
    """An answers row's key: its ``question_id``; LLaVA's MMBench --all-rounds rows (one
    ``question_id``, ``round_id`` k) map to rotation k's id, ``question_id + k·1e6``."""
    qid = row["question_id"]
    if row.get("round_id"):
        qid = int(qid) + ROTATION * int(row["round_id"])
    return str(qid)


def read_answers(path: str, key: Callable[[dict], str] = row_key) -> dict[str, str]:
    """``key(row)`` → ``text`` of an answers JSONL (ours or LLaVA's). A torn last line (a run
    killed mid-write) is ignored; a bad line elsewhere raises naming the line."""
    out: dict[str, str] = {}
    if not os.path.exists(path):
        return out
    with open(path) as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 1:
                continue
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        if "question_id" not in row or "text" not in row:
            raise ValueError(f"{path}:{n}: an answer row needs question_id and text")
        try:
            out[key(row)] = str(row["text"])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}:{n}: cannot match this answer row to a question: {e!r}") from None
    return out


def answer_row(q: Question, text: str, model_id: str) -> str:
    """One answers line as LLaVA's ``model_vqa*`` writes it: question_id, prompt (the question
    text without the leading ``<image>``), text, model_id, metadata."""
    prompt = q.prompt.removeprefix(IMAGE_FIRST)
    qid = q.qid if q.row_id is None else q.row_id
    row = {"question_id": qid, "prompt": prompt, "text": text, "model_id": model_id, "metadata": q.meta}
    return json.dumps(row)


def percent(hits: int, n: int) -> float:
    return 100.0 * hits / n if n else 0.0
