"""Held-out evaluation: greedy answers, exact-match accuracy per question type, LLaVA-style JSONL.

    python -m mage_fast.eval --model DIR --data eval.json [--out answers.jsonl]

Each row's last turn is the reference answer; the turns before it are the prompt. Rows are
grouped by `qtype` (or "all"). Answers are compared after lower-casing and collapsing spaces.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from collections import defaultdict

import torch

from mage_fast.data.image import ImageTransform, load_image
from mage_fast.data.llava import read_rows
from mage_fast.data.llava_conv import make_template
from mage_fast.data.template import ConversationTemplate, to_messages
from mage_fast.export.pretrained import image_transform, load_pretrained
from mage_fast.provenance import input_record, project_version


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .")


def _prepare(rows: list, template: ConversationTemplate, transform: ImageTransform, root: str) -> list[dict]:
    items = []
    for i, row in enumerate(rows):
        sid = str(row.get("id", i)) if isinstance(row, dict) else str(i)
        try:
            msgs = to_messages(row["conversations"])
            if msgs[-1]["role"] != "assistant":
                raise ValueError("the last turn is not an answer")
            images = row.get("image", [])
            images = [images] if isinstance(images, str) else list(images)
            pix = [transform(load_image(os.path.join(root, p))) for p in images]
            ids = template.encode_prompt(row["conversations"][:-1])
        except Exception as e:  # noqa: BLE001 - a bad row is reported and skipped, not fatal
            print(f"skip {sid}: {type(e).__name__}: {e}")
            continue
        s = transform.size
        items.append(
            {
                "id": sid,
                "qtype": row.get("qtype", "all"),
                "gt": msgs[-1]["content"],
                "prompt": msgs[-2]["content"].replace("<image>", "").strip(),
                "input_ids": ids,
                "pixel_values": torch.stack(pix) if pix else torch.zeros(0, 3, s, s),
            }
        )
    return items


def prepare(rows: list, model, tok, root: str, transform: ImageTransform | None = None) -> list[dict]:
    """Rows with reference answers → items (id, qtype, gt, prompt, input_ids, pixel_values)."""
    template = make_template(tok, model.num_image_tokens, model.cfg.template)
    return _prepare(rows, template, transform or ImageTransform(model.image_size), root)


def length_buckets(items: list[dict]) -> list[list[dict]]:
    """Items grouped by prompt length, in order of first appearance (greedy decoding without padding)."""
    buckets: dict[int, list[dict]] = defaultdict(list)
    for it in items:
        buckets[len(it["input_ids"])].append(it)
    return list(buckets.values())


@torch.no_grad()
def answer(model, tok, chunk: list[dict], max_new_tokens: int, synced: bool = False) -> None:
    """Greedy answers for items of one prompt length, written to each item's "text"."""
    gen = model.generate(
        torch.stack([c["input_ids"] for c in chunk]),
        torch.cat([c["pixel_values"] for c in chunk]),
        torch.tensor([c["pixel_values"].shape[0] for c in chunk]),
        max_new_tokens=max_new_tokens,
        eos_token_id=tok.eos_token_id,
        synced=synced,
    )
    for c, g in zip(chunk, gen):
        c["text"] = tok.decode(g, skip_special_tokens=True).strip()


def score(items: list[dict]) -> tuple[dict, dict]:
    """Marks each answered item "correct"; returns (accuracy per qtype + "overall", count per qtype)."""
    hits: dict[str, list[int]] = defaultdict(list)
    for it in items:
        it["correct"] = normalize(it["text"]) == normalize(it["gt"])
        hits[it["qtype"]].append(int(it["correct"]))
    acc = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    acc["overall"] = sum(sum(v) for v in hits.values()) / max(1, len(items))
    return acc, {k: len(v) for k, v in hits.items()}


def write_answers(items: list[dict], path: str, model_id: str) -> None:
    """LLaVA-style answers JSONL (question_id, prompt, text, model_id, metadata), written atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        for it in items:
            row = {
                "question_id": it["id"],
                "prompt": it["prompt"],
                "text": it["text"],
                "model_id": model_id,
                "metadata": {"qtype": it["qtype"], "gt": it["gt"], "correct": it["correct"]},
            }
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


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
    p = argparse.ArgumentParser(prog="mage_fast.eval", description=__doc__.split("\n\n")[0])
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
