"""Held-out answering: rows with reference answers -> greedy answers, exact match per question type.

The library core that both the trainer's held-out checks (`mage_fast.train.accuracy`) and the
evaluation program (`python -m mage_fast.apps.eval`) use. Each row's last turn is the reference
answer; the turns before it are the prompt. Rows are grouped by `qtype` (or "all"). Answers are
compared after lower-casing and collapsing spaces.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict

import torch

from mage_fast.data.image import ImageTransform, load_image
from mage_fast.data.llava_conv import make_template
from mage_fast.data.template import ConversationTemplate, to_messages


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
