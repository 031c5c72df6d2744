"""Held-out evaluation: greedy answers, exact-match accuracy per question type, LLaVA-style JSONL.

    python -m mage_fast.apps.eval --model DIR --data eval.json [--out answers.jsonl]

The answering itself (prompts, greedy decoding, the exact-match rule) is the library's
`mage_fast.train.answering`; this program loads an exported model, runs it and writes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from mage_fast.data.image import ImageTransform
from mage_fast.data.llava import read_rows
from mage_fast.export.pretrained import image_transform, load_pretrained
from mage_fast.provenance import input_record, project_version
from mage_fast.train.answering import answer, length_buckets, prepare, score, write_answers


def made_with(model_dir: str, data: str, model, transform: ImageTransform, decoding: dict) -> dict:
    """How the metrics were made: data file and hash, model folder, template, image rule,
    decoding (batches of one prompt length, no padding), answer rule and project version."""
    return {
        "data": input_record(data),
        "model": os.path.abspath(model_dir),
        "template": model.cfg.template,
        "image": {
            "rule": "bicubic resize to SxS, aspect ratio not kept",
            "size": transform.size,
            "mean": list(transform.mean),
            "std": list(transform.std),
        },
        "decoding": {**decoding, "padding": "none: batches of one prompt length"},
        "answer_rule": "exact match after lower-casing, collapsing spaces and stripping spaces and periods",
        "project": project_version(),
    }


@torch.no_grad()
def evaluate(
    model_dir: str,
    data: str,
    out: str | None = None,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    image_root: str | None = None,
) -> dict:
    """Accuracy per qtype (and overall); writes answers JSONL and metrics JSON when `out` is set."""
    t0 = time.time()
    model, tok = load_pretrained(model_dir)
    root = image_root if image_root is not None else os.path.dirname(os.path.abspath(data))
    items = prepare(read_rows(data), model, tok, root, image_transform(model_dir, model.image_size))
    for group in length_buckets(items):
        for i in range(0, len(group), batch_size):
            answer(model, tok, group[i : i + batch_size], max_new_tokens)
    acc, n = score(items)
    metrics = {"accuracy": acc, "n": n, "seconds": time.time() - t0}
    decoding = {"mode": "greedy", "max_new_tokens": max_new_tokens, "batch_size": batch_size}
    metrics["made_with"] = made_with(model_dir, data, model, image_transform(model_dir, model.image_size), decoding)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_answers(items, out, os.path.basename(os.path.normpath(model_dir)))
        with open(os.path.splitext(out)[0] + "_metrics.json", "w") as f:
            json.dump(metrics, f, indent=1)
    return metrics


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.apps.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported model folder (run_dir/export)")
    p.add_argument("--data", required=True, help="LLaVA JSON/JSONL with reference answers")
    p.add_argument("--out", default=None, help="answers JSONL (metrics go beside it)")
    p.add_argument("--image-root", default=None, help="image folder (default: the data file's folder)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=16)
    a = p.parse_args(argv)
    m = evaluate(a.model, a.data, a.out, a.batch_size, a.max_new_tokens, a.image_root)
    print(f"{'qtype':<10} {'n':>6} {'exact-match':>12}")
    for k, v in m["accuracy"].items():
        print(f"{k:<10} {m['n'].get(k, sum(m['n'].values())):>6} {v:>12.3f}")
    print(json.dumps({"accuracy": m["accuracy"]}))


if __name__ == "__main__":
    main()
