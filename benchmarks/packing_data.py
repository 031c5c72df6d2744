"""A synthetic LLaVA-665k-like mix of training rows, by length only (random token ids).

Where the numbers come from. The shares are LLaVA-1.5's instruction mix (llava_v1_5_mix665k.json,
LLaVA-1.5 paper, Table 7): LLaVA-Instruct-158K (conversation 58K, detail 23K, reasoning 77K) 23.8 %,
ShareGPT 40K text-only 6.1 %, the academic VQA sets (VQAv2 83K, GQA 72K, OKVQA 9K, OCRVQA 80K,
A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K) the rest, of which we move 4 % of all rows to a
multi-image source of 2-4 images (665k has no multi-image row: our assumption, to exercise SAM's
rows). Per-turn token counts are our estimates, not measured on the file: LLaVA-1.5 merges the
questions of one image into one multi-turn row (1-15 short turns; the short-answer prompt adds
~11 tokens to each question), Instruct answers run 30-300 tokens (detail/reasoning rows one turn,
conversation rows 2-6), ShareGPT turns are long. Every image is `image_tokens` placeholders (MAGE's
IAN on a 24 x 24 grid with k = 2: 144; LLaVA-1.5's MLP: 576). A system prompt of 30 tokens and 4
template tokens per message. Rows longer than `max_length` are dropped, as the dataset skips them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from mage_fast.labels import IGNORE_INDEX

SYSTEM, PER_MESSAGE, CAPTION = 30, 4, 16


@dataclass(frozen=True)
class Source:
    """One kind of row: its share of the mix, images and turns per row, question/answer tokens."""

    name: str
    share: float
    images: tuple[int, int]
    turns: tuple[int, int]
    question: tuple[int, int]
    answer: tuple[int, int]


SOURCES = (
    Source("llava_instruct", 0.238, (1, 1), (1, 6), (8, 30), (30, 300)),
    Source("academic_vqa", 0.661, (1, 1), (1, 15), (10, 25), (1, 6)),
    Source("multi_image", 0.040, (2, 4), (1, 3), (15, 40), (20, 120)),
    Source("sharegpt_text", 0.061, (0, 0), (1, 8), (10, 150), (50, 450)),
)


def row_spec(rng: random.Random) -> tuple[str, int, list[tuple[int, int]]]:
    """(source name, images, [(question, answer) tokens per turn]) of one drawn row."""
    src = rng.choices(SOURCES, weights=[s.share for s in SOURCES])[0]
    turns = [(rng.randint(*src.question), rng.randint(*src.answer)) for _ in range(rng.randint(*src.turns))]
    return src.name, rng.randint(*src.images), turns


def make_sample(sid: str, images: int, turns: list[tuple[int, int]], image_tokens: int, vocab: int, g) -> dict:
    """A collator sample: [system, images, (question, answer) per turn], answers labelled."""
    parts, labelled = [torch.randint(1, vocab - 1, (SYSTEM,), generator=g)], [False]
    parts.append(torch.full((images * image_tokens,), vocab - 1))
    labelled.append(False)
    for q, a in turns:
        parts += [torch.randint(1, vocab - 1, (q + PER_MESSAGE,), generator=g)]
        parts += [torch.randint(1, vocab - 1, (a + PER_MESSAGE,), generator=g)]
        labelled += [False, True]
    ids = torch.cat(parts)
    labels = torch.cat([p if lab else torch.full_like(p, IGNORE_INDEX) for p, lab in zip(parts, labelled)])
    return {"id": sid, "input_ids": ids, "labels": labels, "images": images}


def synthetic_rows(n: int, image_tokens: int, max_length: int, vocab: int, seed: int = 0) -> tuple[list[dict], int]:
    """n rows of at most max_length tokens (pixels added by `with_pixels`); and how many drawn
    rows were dropped as over-length."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    rows, dropped = [], 0
    while len(rows) < n:
        _, images, turns = row_spec(rng)
        length = SYSTEM + images * image_tokens + sum(q + a + 2 * PER_MESSAGE for q, a in turns)
        if length > max_length:
            dropped += 1
            continue
        rows.append(make_sample(f"r{len(rows)}", images, turns, image_tokens, vocab, g))
    return rows, dropped


def with_pixels(row: dict, image_size: int, vocab: int) -> dict:
    """The row with random pixels and one 16-token caption per image (the MSE targets)."""
    n = row["images"]
    return {
        **row,
        "pixel_values": torch.randn(n, 3, image_size, image_size),
        "caption_ids": [torch.randint(1, vocab - 1, (CAPTION,)) for _ in range(n)],
    }
