"""The three scorers against hand-computed scores on fixtures in each published format; every
parsing rule has a case."""

from __future__ import annotations

import pytest
from evalsutil import mmbench_rows, write_mme, write_seed, write_tsv

from mage_fast.apps.mllm_bench import mmbench, mme, seed
from mage_fast.apps.mllm_bench.common import extract_letter, read_answers

# -- MME ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, want",
    [("yes", "yes"), ("No", "no"), ("YES", "yes"),  # exactly yes/no after lower-casing
     ("Yes, it is.", "yes"), ("no.", "no"), ("nope", "no"),  # the first 4 characters decide
     ("yesno", "yes"), ("noyes", "no"),  # yes is tried before no, both inside the first 4
     ("know", "no"),  # a substring, as the official script tests it
     ("I think yes", "other"), ("The answer is no", "other"), ("", "other"), ("maybe", "other")],
)  # fmt: skip
def test_mme_yes_no_parsing(text: str, want: str) -> None:
    assert mme.parse_yes_no(text) == want


def test_mme_scores_by_hand(tmp_path) -> None:
    qs = mme.load(write_mme(str(tmp_path)))
    assert len(qs) == 10
    assert qs[0].prompt == "<image>\nIs this by Monet?\nAnswer the question using a single word or phrase."
    by = {(q.row_id, q.prompt.split("\n")[1]): q.qid for q in qs}  # (LLaVA's question_id, question text)
    assert ("artwork/images/0000.png", "Is this by Dali?") in by  # the images/ + questions_answers_YN/ layout
    texts = {
        ("existence/0000.png", "Is there a cat?"): "Yes", ("existence/0000.png", "Is there a dog?"): "no",  # both right
        ("existence/0001.png", "Is there a red block?"): "Yes, there is.",  # image 1 one right
        ("existence/0001.png", "Is there a red scarf in the image?"): "yes",
        ("artwork/images/0000.png", "Is this by Monet?"): "I believe so",  # "other" is wrong
        ("artwork/images/0000.png", "Is this by Dali?"): "No",
        ("commonsense_reasoning/0000.png", "Is it safe?"): "no",
        ("commonsense_reasoning/0000.png", "Is it dangerous?"): "yes",
    }  # color: no answers at all (missing counts wrong)  # fmt: skip
    ans = {by[k]: v for k, v in texts.items()}
    r = mme.score(qs, ans)
    s = r["subtasks"]
    # existence: acc 3/4 = 75, acc+ 1/2 = 50 -> 125; artwork: acc 1/2 = 50, acc+ 0 -> 50
    assert (s["existence"]["acc"], s["existence"]["acc_plus"], s["existence"]["score"]) == (75.0, 50.0, 125.0)
    assert (s["artwork"]["score"], s["artwork"]["other"]) == (50.0, 1)
    assert (s["color"]["score"], r["missing"]) == (0.0, 2)
    assert s["commonsense_reasoning"]["score"] == 200.0
    assert (r["perception"], r["cognition"], r["total"]) == (175.0, 200.0, 375.0)
    assert "count" in r["absent_subtasks"] and "perception 175.00 / 2000" in mme.report(r)


def test_mme_bad_line(tmp_path) -> None:
    root = write_mme(str(tmp_path))
    with open(f"{root}/color/0000.txt", "a") as f:
        f.write("Is it green? maybe\n")
    with pytest.raises(ValueError, match=r"0000.txt:3: expected 'question<TAB>Yes\|No'"):
        mme.load(root)


# -- letters --------------------------------------------------------------------------------------

COLOURS = ["red", "green", "blue", "yellow"]


@pytest.mark.parametrize(
    "text, choices, want",
    [("B", COLOURS, "B"), ("(C)", COLOURS, "C"), ("D.", COLOURS, "D"),
     ("I pick B", COLOURS, "B"),  # rule 1: one option letter among the last words
     ("A cat sits on a mat", COLOURS, None),  # "A" is not among the last three words
     ("B or C", COLOURS, None),  # two letters, no "answer is", no option text
     ("I'd say the answer is C, not A", COLOURS, "C"),  # rule 2 after rule 1 sees two letters
     ("The Answer is: (B) but also A", COLOURS, "B"),
     ("the answer is d", COLOURS, None),  # a lower-case letter is not an option letter
     ("It is green.", COLOURS, "B"),  # rule 3: one option text
     ("red or green", COLOURS, None),  # two option texts
     ("D", ["cat", "dog", "bird"], None),  # D is not an option of a 3-choice question
     ("", COLOURS, None)],
)  # fmt: skip
def test_letter_extraction(text: str, choices: list[str], want: str | None) -> None:
    assert extract_letter(text, choices) == want


# -- MMBench --------------------------------------------------------------------------------------


def test_mmbench_circular_by_hand(tmp_path) -> None:
    qs = mmbench.load(write_tsv(str(tmp_path / "dev.tsv"), mmbench_rows()))
    by = {q.qid: q for q in qs}
    assert sorted(by, key=int) == ["0", "1", "1000000", "1000001", "2000000", "2000001", "3000000"]
    # rotation 1 of question 0 shows green, blue, yellow, red: red (the answer) moves to D
    assert by["1000000"].choices == ["green", "blue", "yellow", "red"] and by["1000000"].gt == "D"
    assert by["2000001"].choices == ["bird", "cat", "dog"] and by["2000001"].gt == "C"
    assert by["1"].prompt == ("<image>\nLook closely.\nWhich animal is drawn?\nA. cat\nB. dog\nC. bird\n"
                              "Answer with the option's letter from the given choices directly.")  # fmt: skip
    ans = {"0": "A", "1000000": "D", "2000000": "The answer is C", "3000000": "B",  # all right
           "1": "B", "1000001": "A", "2000001": "cat"}  # rotation 2 names cat (B): wrong  # fmt: skip
    r = mmbench.score(qs, ans)
    assert (r["overall"], r["questions"], r["rows"], r["single_pass"]) == (50.0, 2, 7, 100.0)
    assert r["categories"] == {"attribute": 100.0, "instance": 0.0}
    ans["2000001"] = "gibberish"
    r = mmbench.score(qs, ans)
    assert (r["overall"], r["unparsed"]) == (50.0, 1)


def test_mmbench_rotations_from_the_file(tmp_path) -> None:
    """A dev TSV that holds its rotations (index + k·1e6, the image given as the base row's index)
    is not rotated again."""
    base = mmbench_rows()[0]
    rot = dict(base, index=1000000, A="green", B="blue", C="yellow", D="red", answer="D", image="0")
    qs = mmbench.load(write_tsv(str(tmp_path / "dev.tsv"), [base, rot]))
    assert [q.qid for q in qs] == ["0", "1000000"] and qs[1].image == qs[0].image
    assert mmbench.score(qs, {"0": "A", "1000000": "D"})["overall"] == 100.0
    assert mmbench.score(qs, {"0": "A", "1000000": "A"})["overall"] == 0.0


def test_llava_all_rounds_answers(tmp_path) -> None:
    """LLaVA's --all-rounds answers (one question_id, round_id 0..n-1) map onto the rotation ids."""
    p = tmp_path / "a.jsonl"
    p.write_text('{"question_id": 1, "round_id": 0, "text": "B"}\n{"question_id": 1, "round_id": 2, "text": "C"}\n'
                 '{"question_id": 1, "round_id": 1, "te')  # a torn last line is ignored  # fmt: skip
    assert read_answers(str(p)) == {"1": "B", "2000001": "C"}


# -- SEED-Bench -------------------------------------------------------------------------------------


def test_seed_by_hand(tmp_path) -> None:
    qs, names = seed.load(write_seed(str(tmp_path)))
    assert [q.qid for q in qs] == ["100", "101", "102", "103"]  # the video question is left out
    assert names[3] == "Instance Location" and names[4] == "Instance Attributes"  # the file's mapping
    assert qs[0].image.endswith("SEED-Bench-image/00000_0.png")
    ans = {"100": "A", "101": "A", "102": "The answer is C", "103": "B"}
    r = seed.score(qs, ans, names)
    assert r["dimensions"] == {"Instance Location": 50.0, "Instance Attributes": 100.0, "Text Understanding": 0.0}
    assert (r["overall"], r["questions"]) == (50.0, 4)
