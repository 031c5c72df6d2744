"""LLaVA-1.5's own answers files score as LLaVA's scripts score them: MME through a transcription
of ``convert_answer_to_mme.py`` + MME's ``calculation.py``, SEED-Bench through
``convert_seed_for_submission.py``'s accuracy; our MME prompts are ``llava_mme.jsonl``'s; and our
answers file scores the same as LLaVA's for the same answers."""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest
from evalsutil import write_mme, write_seed

from mage_fast.apps.mllm_bench import mme, seed
from mage_fast.apps.mllm_bench.__main__ import main
from mage_fast.apps.mllm_bench.common import answer_row

# Rows of LLaVA's playground/data/eval/MME/llava_mme.jsonl and the MME release lines they ask
# (the second with MME's two spaces before the yes/no request).
LLAVA_MME = [
    ("Is there a laptop in this image? Please answer yes or no.",
     "Is there a laptop in this image?\nAnswer the question using a single word or phrase."),
    ("Is there a red scarf in the image?  Please answer yes or no.",
     "Is there a red scarf in the image?\nAnswer the question using a single word or phrase."),
    ("Is this artwork displayed in mus\u00e9e toulouse-lautrec, albi? Please answer yes or no.",
     "Is this artwork displayed in mus\u00e9e toulouse-lautrec, albi?\nAnswer the question using a single word or phrase."),
]  # fmt: skip


def test_mme_prompt_is_llavas(tmp_path) -> None:
    os.makedirs(tmp_path / "existence")
    (tmp_path / "existence" / "000000494427.jpg").write_bytes(b"")
    (tmp_path / "existence" / "000000494427.txt").write_text("".join(f"{m}\tYes\n" for m, _ in LLAVA_MME))
    qs = mme.load(str(tmp_path))
    assert [q.prompt for q in qs] == ["<image>\n" + t for _, t in LLAVA_MME]
    assert {q.row_id for q in qs} == {"existence/000000494427.jpg"}  # LLaVA's question_id
    row = json.loads(answer_row(qs[1], "No", "m"))
    assert (row["question_id"], row["prompt"]) == ("existence/000000494427.jpg", LLAVA_MME[1][1])


# -- a transcription of LLaVA's playground/data/eval/MME/convert_answer_to_mme.py (get_gt and the
# conversion) and of MME's eval_tool/calculation.py (acc and acc+ per task; accuracy_score is the
# mean of equal labels).
def _convert(data_path: str, answers: list[dict]) -> dict[str, list[str]]:
    gt = {}
    for category in os.listdir(data_path):
        category_dir = os.path.join(data_path, category)
        if not os.path.isdir(category_dir):
            continue
        if os.path.exists(os.path.join(category_dir, "images")):
            qa_path = os.path.join(category_dir, "questions_answers_YN")
        else:
            qa_path = category_dir
        for file in os.listdir(qa_path):
            if file.endswith(".txt"):
                for line in open(os.path.join(qa_path, file)):
                    question, answer = line.strip().split("\t")
                    gt[(category, file, question)] = answer
    results = defaultdict(list)
    for answer in answers:
        category = answer["question_id"].split("/")[0]
        file = answer["question_id"].split("/")[-1].split(".")[0] + ".txt"
        results[category].append((file, answer["prompt"], answer["text"]))
    out = defaultdict(list)
    for category, tups in results.items():
        for file, prompt, answer in tups:
            if "Answer the question using a single word or phrase." in prompt:
                prompt = prompt.replace("Answer the question using a single word or phrase.", "").strip()
            if "Please answer yes or no." not in prompt:
                prompt = prompt + " Please answer yes or no."
                if (category, file, prompt) not in gt:
                    prompt = prompt.replace(" Please answer yes or no.", "  Please answer yes or no.")
            out[category].append("\t".join((file, prompt, gt[category, file, prompt], answer)) + "\n")
    return out


def _parse_pred_ans(pred_ans: str) -> str:
    if pred_ans in ["yes", "no"]:
        return pred_ans
    prefix = pred_ans[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def _calculation(lines: list[str]) -> float:
    gts, preds, plus = [], [], 0
    chunks = [lines[i : i + 2] for i in range(0, len(lines), 2)]
    for items in chunks:
        assert len(items) == 2
        right = 0
        for item in items:
            _, _, gt_ans, pred_ans = item.split("\t")
            gt_ans, pred_ans = gt_ans.lower(), _parse_pred_ans(pred_ans.lower())
            gts.append(gt_ans)
            preds.append(pred_ans)
            right += gt_ans == pred_ans
        plus += right == 2
    acc = sum(g == p for g, p in zip(gts, preds)) / len(gts)
    return acc * 100 + plus / len(chunks) * 100


# Answers per question in file order: right, wrong, "other", a 4-character prefix, upper case.
TEXTS = ["Yes", "no", "I think so", "No, it is not.", "YES", "know", "yes", "Nope", "maybe", "No"]


@pytest.fixture()
def llava_answers(tmp_path) -> tuple[str, list[mme.Question], str]:
    """(MME folder, its questions, a LLaVA model_vqa_loader answers file for TEXTS)."""
    root = write_mme(str(tmp_path / "mme"))
    qs = mme.load(root)
    path = str(tmp_path / "llava.jsonl")
    with open(path, "w") as f:
        for q, text in zip(qs, TEXTS):
            llava_text = q.prompt.removeprefix("<image>\n")
            f.write(json.dumps({"question_id": q.row_id, "prompt": llava_text, "text": text,
                                "answer_id": "x", "model_id": "llava-v1.5-7b", "metadata": {}}) + "\n")  # fmt: skip
    return root, qs, path


def test_llava_mme_answers_score_as_llavas_scripts(llava_answers) -> None:
    root, _, path = llava_answers
    rows = [json.loads(line) for line in open(path)]
    want = {c: _calculation(lines) for c, lines in _convert(root, rows).items()}
    got = main(["mme", "--data", root, "--answers", path])
    print(want, {s: r["score"] for s, r in got["subtasks"].items()})
    assert {s: r["score"] for s, r in got["subtasks"].items()} == pytest.approx(want, abs=1e-9)
    assert (got["missing"], got["unmatched"]) == (0, 0)
    assert got["perception"] == pytest.approx(sum(v for c, v in want.items() if c in mme.PERCEPTION), abs=1e-9)


def test_our_answers_file_scores_as_llavas(llava_answers, tmp_path) -> None:
    root, qs, path = llava_answers
    ours = str(tmp_path / "ours.jsonl")
    with open(ours, "w") as f:
        f.writelines(answer_row(q, t, "ours") + "\n" for q, t in zip(qs, TEXTS))
    got, want = main(["mme", "--data", root, "--answers", ours]), main(["mme", "--data", root, "--answers", path])
    assert got.pop("made_with")["answers"] != want.pop("made_with")["answers"] and got == want


def test_an_answer_of_another_benchmark_counts_unmatched(llava_answers, tmp_path) -> None:
    root, _, path = llava_answers
    with open(path, "a") as f:
        f.write(json.dumps({"question_id": "existence/0000.png", "prompt": "Is there a horse?", "text": "no"}) + "\n")
    assert main(["mme", "--data", root, "--answers", path])["unmatched"] == 1


def test_llava_seed_answers_score_as_convert_seed(tmp_path) -> None:
    """LLaVA's model_vqa_loader rows for SEED-Bench (letters): our accuracy is
    convert_seed_for_submission.py's exact-match accuracy over the image questions."""
    data = write_seed(str(tmp_path))
    qs, _ = seed.load(data)
    texts = ["A", "C", "C", "B"]
    path = str(tmp_path / "merge.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps({"question_id": q.qid, "prompt": "p", "text": t, "metadata": {}}) + "\n"
                     for q, t in zip(qs, texts))  # fmt: skip
    doc = json.load(open(data))
    image_qs = [d for d in doc["questions"] if d["data_type"] == "image"]
    want = 100 * sum(t == d["answer"] for d, t in zip(image_qs, texts)) / len(image_qs)
    assert main(["seed", "--data", data, "--answers", path])["overall"] == pytest.approx(want)
