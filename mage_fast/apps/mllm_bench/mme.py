"""MME: 14 subtasks of yes/no questions, two per image, scored as the official calculation.py.

Layout (the release folder): ``DATA/<subtask>/`` holds either ``images/`` + ``questions_answers_YN/``
(artwork, celebrity, landmark, posters, scene) or the images and their ``.txt`` side by side (the
others). Each ``.txt`` is named after its image and holds ``question<TAB>Yes|No`` lines.

Prompts and answers files are LLaVA-1.5's (``llava_mme.jsonl``, ``model_vqa_loader``): the
question without its trailing "Please answer yes or no.", then "\nAnswer the question using a
single word or phrase."; an answers row's ``question_id`` is the image's path under ``DATA``
(``existence/0000.png``, ``artwork/images/X.jpg``), shared by both questions of an image, and
its ``prompt`` is that text. Answers are matched as LLaVA's ``convert_answer_to_mme.py`` matches
them: by subtask (the id's first folder), the ``.txt`` named after the id's file (up to its first
dot) and the question text (the single-word instruction and the yes/no request set aside), so
LLaVA's own answers files and ours score alike.

Scoring: an answer is lower-cased; exactly "yes"/"no" is that, else "yes" within its first 4
characters is yes, else "no" there is no, else "other" (always wrong). Per subtask
score = 100·acc + 100·acc+ (acc+: images whose questions are all right); perception sums the 10
perception subtasks (max 2000), cognition the 4 cognition subtasks (max 800).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

from mage_fast.apps.mllm_bench.common import IMAGE_FIRST, SHORT_ANSWER, Question, percent, user_turn

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# MME's yes/no request ends each question, after one space or (in a few lines) two.
_YES_NO = re.compile(r"\s*Please answer yes or no\.\s*$")


def llava_text(question: str) -> str:
    """The question as ``llava_mme.jsonl`` asks it: MME's trailing "Please answer yes or no."
    (and the spaces before it) removed."""
    return _YES_NO.sub("", question.strip())


def match_key(subtask: str, txt_name: str, question: str) -> str:
    """The key a question and its answer meet under: subtask, the image's ``.txt`` and the
    question text (``convert_answer_to_mme.py``'s (category, file, question), with the yes/no
    request on neither side)."""
    return f"{subtask}/{txt_name}\t{llava_text(question)}"


def answer_key(row: dict) -> str:
    """:func:`match_key` of an answers row (LLaVA's or ours), from its question_id and prompt."""
    qid = str(row["question_id"])
    txt_name = qid.split("/")[-1].split(".")[0] + ".txt"
    prompt = str(row["prompt"]).removeprefix(IMAGE_FIRST).replace(SHORT_ANSWER, "").strip()
    return match_key(qid.split("/")[0], txt_name, prompt)


def _pairs(subdir: str) -> list[tuple[str, str]]:
    """(txt path, image path) per image of one subtask folder."""
    qa = os.path.join(subdir, "questions_answers_YN")
    txt_dir, img_dir = (qa, os.path.join(subdir, "images")) if os.path.isdir(qa) else (subdir, subdir)
    images = {os.path.splitext(f)[0]: f for f in os.listdir(img_dir) if f.lower().endswith(_IMAGE_EXT)}
    out = []
    for f in sorted(os.listdir(txt_dir)):
        if f.endswith(".txt"):
            stem = os.path.splitext(f)[0]
            if stem not in images:
                raise FileNotFoundError(f"MME {subdir}: no image for {f} in {img_dir}")
            out.append((os.path.join(txt_dir, f), os.path.join(img_dir, images[stem])))
    return out


def load(data: str) -> list[Question]:
    """Every question of the subtask folders found under ``data`` (unknown folders are ignored)."""
    if not os.path.isdir(data):
        raise FileNotFoundError(f"MME: {data!r} is not the benchmark folder")
    questions = []
    for sub in sorted(set(os.listdir(data)) & set(PERCEPTION + COGNITION)):
        for txt, img in _pairs(os.path.join(data, sub)):
            with open(txt, encoding="utf-8") as f:
                lines = [ln.rstrip("\n") for ln in f if ln.strip()]
            row_id = os.path.relpath(img, data).replace(os.sep, "/")
            for k, line in enumerate(lines):
                q, sep, gt = line.rpartition("\t")
                if not sep or gt.strip().lower() not in ("yes", "no"):
                    raise ValueError(f"{txt}:{k + 1}: expected 'question<TAB>Yes|No', got {line!r}")
                qid = match_key(sub, os.path.basename(txt), q)
                meta = {"subtask": sub, "image": os.path.basename(img)}
                prompt = user_turn(llava_text(q), SHORT_ANSWER)
                questions.append(Question(qid, img, prompt, gt.strip().lower(), meta=meta, row_id=row_id))
    if not questions:
        raise ValueError(f"MME: no subtask folders ({', '.join(PERCEPTION + COGNITION)}) under {data}")
    return questions


def parse_yes_no(text: str) -> str:
    """The official MME answer parsing: "yes", "no" or "other"."""
    t = text.lower()
    if t in ("yes", "no"):
        return t
    head = t[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score(questions: list[Question], answers: dict[str, str]) -> dict:
    """Per-subtask acc, acc+, score and counts; perception, cognition and total sums. An
    unanswered question counts wrong (and is counted in ``missing``); answers that match no
    question are counted in ``unmatched``. ``answers`` maps :func:`answer_key` to text."""
    per_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other = defaultdict(int)
    missing = 0
    for q in questions:
        text = answers.get(q.qid)
        missing += text is None
        pred = parse_yes_no(text) if text is not None else "other"
        other[q.meta["subtask"]] += pred == "other"
        per_image[q.meta["subtask"]][q.meta["image"]].append(pred == q.gt)
    subtasks = {}
    for sub, images in per_image.items():
        flat = [r for rs in images.values() for r in rs]
        acc = percent(sum(flat), len(flat))
        acc_plus = percent(sum(all(rs) for rs in images.values()), len(images))
        subtasks[sub] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": acc + acc_plus,
            "questions": len(flat),
            "images": len(images),
            "other": other[sub],
        }
    perception = sum(subtasks[s]["score"] for s in PERCEPTION if s in subtasks)
    cognition = sum(subtasks[s]["score"] for s in COGNITION if s in subtasks)
    absent = [s for s in PERCEPTION + COGNITION if s not in subtasks]
    return {
        "subtasks": subtasks,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "absent_subtasks": absent,
        "missing": missing,
        "unmatched": len(set(answers) - {q.qid for q in questions}),
    }


def report(result: dict) -> str:
    """A text table: one line per subtask, then the two sums."""
    lines = [f"{'subtask':<24} {'acc':>7} {'acc+':>7} {'score':>7}"]
    for group in (PERCEPTION, COGNITION):
        for s in group:
            if s in result["subtasks"]:
                r = result["subtasks"][s]
                lines.append(f"{s:<24} {r['acc']:>7.2f} {r['acc_plus']:>7.2f} {r['score']:>7.2f}")
    lines.append(f"perception {result['perception']:.2f} / 2000, cognition {result['cognition']:.2f} / 800")
    if result["missing"] or result["unmatched"]:
        lines.append(f"unanswered questions {result['missing']}, answers matching no question {result['unmatched']}")
    if result["absent_subtasks"]:
        lines.append(f"absent subtasks (score 0): {', '.join(result['absent_subtasks'])}")
    return "\n".join(lines)
