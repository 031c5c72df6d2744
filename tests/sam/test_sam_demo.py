"""demo-multi's parts: per-item scores that add up to the corpus scores, mean ± std, the paired
bootstrap, the report files, and the guidance extraction (alpha, knock-out, probe, maps) on a tiny
SAM model over a tiny shapes.multi world."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.apps.caption_score import METRICS, caption_scores
from mage_fast.apps.demo_multi_look import answers, draw_maps, link_patches, per_image_map, probe, set_guidance
from mage_fast.apps.demo_multi_report import write_results
from mage_fast.apps.demo_multi_stats import item_scores, mean_std, metric_of, object_hits, paired_bootstrap
from mage_fast.model.aligner import build_aligner
from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.sam import context_pairs, grouped_softmax_sum

WORDS = "a red blue circle square moved from to top left center turned every scene has .".split()


def _corpus(n: int, seed: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    rng = random.Random(seed)
    refs = {f"i{k}": [" ".join(rng.choices(WORDS, k=rng.randint(5, 10)))] for k in range(n)}
    # half the predictions are the reference with one word changed, half random
    preds = {}
    for k, (r,) in refs.items():
        w = r.split()
        w[rng.randrange(len(w))] = rng.choice(WORDS)
        preds[k] = " ".join(w) if rng.random() < 0.5 else " ".join(rng.choices(WORDS, k=rng.randint(3, 9)))
    return refs, preds


def test_item_scores_add_up_to_the_corpus_scores():
    refs, preds = _corpus(30, 0)
    items = item_scores(preds, refs, list(refs))
    want = caption_scores(preds, refs)
    got = {m: float(metric_of(items, m)) for m in METRICS}
    print(want, got)
    assert all(abs(got[m] - want[m]) < 1e-9 * max(1.0, want[m]) for m in METRICS)
    assert want["BLEU-4"] > 1  # the check covers a non-trivial BLEU


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0) and mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_object_hits():
    refs = {
        "g": ["every scene has a red circle ."],
        "c": ["the blue square turned red ."],
        "s": ["a green triangle is at top ."],
    }
    tasks = {"g": "group", "c": "change", "s": "story"}
    preds = {
        "g": "every scene has a red circle .",
        "c": "the red square turned blue .",
        "s": "a green triangle is at left .",
    }
    got = object_hits(preds, refs, tasks)
    assert [got[t]["object"] for t in ("group", "change", "story")] == [1.0, 0.0, 1.0]
    assert got["all"] == {"object": 2 / 3, "distinct": 3, "n": 3}
    assert object_hits({"g": "", "c": "", "s": ""}, refs, tasks)["all"] == {"object": 0.0, "distinct": 1, "n": 3}


def test_paired_bootstrap():
    refs, preds = _corpus(40, 1)
    ids = list(refs)
    worse = {k: " ".join(v.split()[:-2]) for k, v in preds.items()}  # every prediction loses words
    same = [item_scores(preds, refs, ids) for _ in range(3)]
    d0 = paired_bootstrap(same, same, n_boot=200)
    assert all(d0[m]["diff"] == 0 and d0[m]["lo"] == 0 == d0[m]["hi"] for m in METRICS)
    better = paired_bootstrap([item_scores(worse, refs, ids)] * 3, same, n_boot=200)
    print(better)
    assert all(better[m]["lo"] > 0 and better[m]["p_le_0"] == 0 for m in ("ROUGE-L", "CIDEr-D"))
    assert better["BLEU-4"]["diff"] > 0 and better["BLEU-4"]["lo"] <= better["BLEU-4"]["diff"] <= better["BLEU-4"]["hi"]
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap(same, same[:2])


def test_write_results(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir(), out.mkdir()
    refs, preds = _corpus(12, 2)
    tasks = ["group", "change", "story"]
    (data / "eval.json").write_text(
        json.dumps([{"id": k, "task": tasks[i % 3], "refs": v} for i, (k, v) in enumerate(refs.items())])
    )
    timing = {"steps": 7, "train_cpu_s": 10.0, "eval_cpu_s": 2.0}
    perfect = {k: v[0] for k, v in refs.items()}
    probe_row = {"entropy": 0.9, "link_lift": 1.2, "guidance_size": 0.1}
    done = {
        "ian": [dict(answers=preds, **timing), dict(answers=preds, **dict(timing, train_cpu_s=None))],
        "sam": [dict(answers=perfect, answers_noguide=preds, probe=probe_row, **timing)] * 2,
    }
    md = write_results(str(out), str(data), done, [0, 1], [], 100, 30.0)
    print(md)
    lines = md.splitlines()
    assert lines[0] == "| task | metric | ian | sam | sam − ian [95 % CI] |"
    row = next(x for x in lines if x.startswith("| all | CIDEr-D |"))
    assert "± 0.0" in row and row.split("|")[4].strip().startswith("1000.0")  # a perfect corpus: CIDEr-D 10 x 100
    hit = object_hits(perfect, refs, {k: tasks[i % 3] for i, k in enumerate(refs)})["all"]["object"]
    assert any(x.startswith("| all | ") and f"| {hit:.2f} ± 0.00 (12 distinct) |" in x for x in lines)
    saved = json.loads((out / "results.json").read_text())
    assert saved["diff"]["sam"]["all"]["ROUGE-L"]["lo"] > 0 and saved["timing"]["train_cpu_s"] == 30.0
    assert "training 30 s (1 trained by another process, not counted)" in md
    assert saved["probe"]["sam"]["link_lift"] == [1.2, 0.0]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def _sam(include_self: bool, grid: int = 6):
    torch.manual_seed(0)
    cfg = AlignerConfig(type="sam", pool_k=6, num_heads=2, mlp_ratio=1.0, sam_include_self=include_self)
    return build_aligner(cfg, 16, 32, grid, KernelConfig())


@pytest.mark.parametrize("include_self", [True, False])
def test_set_guidance_alpha(include_self):
    al = _sam(include_self)
    with torch.no_grad():
        al.score.weight.normal_()
    v = torch.randn(3, 36, 16, generator=torch.Generator().manual_seed(0))
    alpha, size = set_guidance(al, v)
    assert alpha.shape == ((1 if include_self else 3), 3, 36) and torch.equal(size, torch.zeros(3))  # P21 is 0 at init
    assert torch.allclose(alpha.sum(1), torch.ones(alpha.shape[0], 36))
    if not include_self:
        assert torch.equal(alpha[[0, 1, 2], [0, 1, 2]], torch.zeros(3, 36))  # an image is not in its own context
    # the weights are the ones the aligner mixes its context with
    unit, src, _, ctx_of = context_pairs(torch.tensor([3]), include_self)
    ctx = grouped_softmax_sum(al.score(v).squeeze(-1).float(), v, unit, src, int(ctx_of.max()) + 1)
    assert torch.allclose(torch.einsum("unp,npc->upc", alpha, v), ctx, atol=1e-6)
    m = per_image_map(alpha)
    # include-self: the one context's weights; exclude-self: each image's mean over its 2 contexts
    assert m.shape == (3, 36) and torch.allclose(m.sum(0), torch.full((36,), 1.0 if include_self else 1.5), atol=1e-6)


def test_link_patches():
    assert link_patches(0, 6) == [0, 1, 6, 7] and link_patches(4, 6) == [14, 15, 20, 21] and link_patches(8, 3) == [8]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoTokenizer

    from mage_fast.data import ensure_special_tokens
    from mage_fast.model.mllm import MageModel
    from mage_fast.shapes.multi import generate

    data = str(tmp_path_factory.mktemp("multi"))
    generate(data, n=1, seed=0, n_eval=2, size=24)
    tok = AutoTokenizer.from_pretrained(os.path.join(data, "tokenizer"))
    ensure_special_tokens(tok)
    torch.manual_seed(0)
    model = MageModel(tiny_model_config("sam"), len(tok), tok.convert_tokens_to_ids("<image>"))
    with torch.no_grad():
        for p in (*model.aligner.p21.parameters(), *model.aligner.p12.parameters(), model.aligner.score.weight):
            p.normal_(std=0.5)
    with open(os.path.join(data, "eval.json")) as f:
        rows = json.load(f)
    return model, tok, data, rows


def test_knockout_and_restore(tiny):
    model, tok, data, rows = tiny
    before = [p.clone() for p in model.aligner.p21.parameters()]
    on = answers(model, tok, data, rows, 4)
    off = answers(model, tok, data, rows, 4, guidance=False)
    assert set(on) == set(off) == {r["id"] for r in rows}
    assert all(torch.equal(a, b) for a, b in zip(before, model.aligner.p21.parameters()))
    assert answers(model, tok, data, rows, 4) == on


def test_probe_and_maps(tiny, tmp_path):
    model, tok, data, rows = tiny
    p = probe(model, data, rows)
    print(p)
    assert 0 < p["entropy"] <= 1 and p["link_lift"] > 0 and p["guidance_size"] > 0 and p["sets"] == len(rows)
    path = str(tmp_path / "maps.png")
    draw_maps(model, data, rows[:3], {"sam": {rows[0]["id"]: "every scene has a red circle ."}}, path)
    assert open(path, "rb").read(4) == b"\x89PNG"


def test_finished_runs_reused(tmp_path, monkeypatch):
    import argparse
    import subprocess

    from mage_fast.apps.demo_multi import VARIANTS, run_all, run_dir

    for v in VARIANTS:
        for s in (3, 4):
            os.makedirs(run_dir(str(tmp_path), v, s))
            with open(os.path.join(run_dir(str(tmp_path), v, s), "done.json"), "w") as f:
                json.dump({"variant": v, "seed": s}, f)

    def no_launch(*args, **kwargs):
        raise AssertionError("a finished run was launched again")

    monkeypatch.setattr(subprocess, "run", no_launch)
    a = argparse.Namespace(out=str(tmp_path), data="unused", config="unused", seeds=[3, 4], jobs=2, overrides=[])
    done = run_all(a)
    assert {v: [r["seed"] for r in rs] for v, rs in done.items()} == {v: [3, 4] for v in VARIANTS}
    assert all(r["variant"] == v for v, rs in done.items() for r in rs)


def test_make_passes_seeds_and_overrides():
    from testutil import make_dry_run

    lines = make_dry_run("-o", ".venv/.mage-fast-installed", "demo-multi", "MULTI_SEEDS=3 4", "MULTI_ARGS=max_steps=9")
    line = lines[-1]
    assert "-m mage_fast.apps.demo_multi" in line and line.endswith("max_steps=9 --seeds 3 4")
