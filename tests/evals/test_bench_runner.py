"""The runner end to end on a tiny random export: every question answered once into a LLaVA-style
JSONL, a rerun skips answered ids (also after a torn last line), batching changes no answer, the
likelihood mode picks the argmax of the option scores, and the CLI scores any answers file."""

from __future__ import annotations

import json
import os

import pytest
import torch
from evalsutil import mmbench_rows, write_mme, write_seed, write_tsv

from mage_fast.apps.mllm_bench import mmbench, mme, runner, seed
from mage_fast.apps.mllm_bench.__main__ import main
from mage_fast.apps.mllm_bench.common import row_key
from mage_fast.provenance import sha256_file


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bench")
    os.makedirs(root / "mme")
    return {
        "mme": write_mme(str(root / "mme")),
        "mmbench": write_tsv(str(root / "dev.tsv"), mmbench_rows()),
        "seed": write_seed(str(root / "seed")),
    }


@pytest.fixture(scope="module")
def bench(tiny_export) -> runner.Bench:
    return runner.load(tiny_export)


def _lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", ["mme", "mmbench", "seed"])
def test_cli_answers_then_scores(name, data, tiny_export, tmp_path) -> None:
    out = str(tmp_path / f"{name}.jsonl")
    result = main([name, "--model", tiny_export, "--data", data[name], "--out", out, "--batch-size", "3",
                   "--max-new-tokens", "4"])  # fmt: skip
    rows = _lines(out)
    want = {"mme": 10, "mmbench": 7, "seed": 4}[name]
    key = mme.answer_key if name == "mme" else row_key  # MME's two questions of an image share an id
    assert len(rows) == want == len({key(r) for r in rows})
    assert set(rows[0]) == {"question_id", "prompt", "text", "model_id", "metadata"}
    assert os.path.isfile(str(tmp_path / f"{name}_scores.json"))
    # scoring the written file alone (any model's answers) gives the same scores
    made = result.pop("made_with")
    alone = main([name, "--data", data[name], "--answers", out])
    assert alone.pop("made_with")["model"] is None and alone == json.loads(json.dumps(result))
    # how the scores were made
    assert made["benchmark"] == name and len(made["data"]["sha256"]) == 64 and made["project"]["mage_fast"]
    assert made["answers"]["sha256"] == sha256_file(out) and made["answer_extraction"]
    m = made["model"]
    assert (m["image"]["aspect"], m["decoding"]["max_new_tokens"], m["decoding"]["batch_size"]) == ("resize", 4, 3)
    assert m["template"]["first_prompt"].count("<image>") == 1 and m["decoding"]["answered_in_this_run"] == want


def test_resume_skips_answered_ids(data, tiny_export, tmp_path) -> None:
    out = str(tmp_path / "mme.jsonl")
    qs = mme.load(data["mme"])
    runner.run(runner.load(tiny_export), qs[:4], out, runner.max_new_tokens(3))
    first = open(out).read()
    with open(out, "a") as f:
        f.write('{"question_id": "torn')  # a run killed mid-line
    main(["mme", "--model", tiny_export, "--data", data["mme"], "--answers", out, "--max-new-tokens", "3"])
    text = open(out).read()
    assert text.startswith(first)  # the answered rows were kept, not redone
    keys = [mme.answer_key(r) for r in _lines(out)]
    assert keys[:4] == [q.qid for q in qs[:4]] and sorted(keys) == sorted(q.qid for q in qs)


def test_batching_changes_no_answer(bench, data, tmp_path) -> None:
    qs = mmbench.load(data["mmbench"])
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    runner.run(bench, qs, a, runner.max_new_tokens(5), batch_size=1)
    runner.run(bench, qs, b, runner.max_new_tokens(5), batch_size=8)
    key = {r["question_id"]: r["text"] for r in _lines(a)}
    assert key == {r["question_id"]: r["text"] for r in _lines(b)}


def test_pad_aspect_is_llavas_expand2square(bench, data) -> None:
    """--aspect pad centres the image on a square of the mean colour before the resize."""
    from PIL import Image

    img = Image.new("RGB", (30, 20), (200, 30, 30))
    sq = runner.pad_to_square(img, bench.transform.mean)
    assert sq.size == (30, 30) and sq.getpixel((0, 0)) == tuple(int(m * 255) for m in bench.transform.mean)
    assert sq.getpixel((0, 5)) == (200, 30, 30) and sq.getpixel((0, 4)) != (200, 30, 30)  # (30 - 20) // 2 rows above
    qs = mme.load(data["mme"])[:2]
    padded = runner.pixels(runner.Bench(**{**bench.__dict__, "aspect": "pad"}), qs)
    assert padded.shape == runner.pixels(bench, qs).shape and not torch.equal(padded, runner.pixels(bench, qs))


def test_likelihood_mode(bench, data, tiny_export, tmp_path) -> None:
    qs, _ = seed.load(data["seed"])
    scores = runner.choice_scores(bench, qs)
    assert scores.shape == (4, 4) and bool((scores < 0).all())
    # each row's scores equal the same option scored alone (right padding does not leak)
    torch.testing.assert_close(runner.choice_scores(bench, qs[1:2]), scores[1:2], rtol=1e-5, atol=1e-5)
    out = str(tmp_path / "seed.jsonl")
    main(["seed", "--model", tiny_export, "--data", data["seed"], "--out", out, "--mode", "likelihood"])
    picked = [r["text"] for r in _lines(out)]
    assert picked == ["ABCD"[int(i)] for i in scores.argmax(1)]
