"""The built-in task: a shapes world drawn on a grid, as LLaVA JSON splits plus a word tokenizer.

    python -m mage_fast.shapes.scenes --out DIR --n N --seed S

Each image (S×S px, default 48) holds 1–4 coloured shapes, each in its own cell of a 3×3 grid
(cell = S/3 px, so with 8-px patches and 2×2 pooling each pooled visual token sees one cell).
(colour, shape) pairs are unique within an image so every question has one answer. Written:

  DIR/images/NNNNN.png
  DIR/stage1.json   captions ("describe the image ." → "a red circle at top left , ...", objects
                    in random order), stage 1
                    With --places, also a position-first description per image ("describe each
                    place ." → "at center is a blue square , at top left is a red circle ."): the
                    position → content lookup that colour and shape questions need, once per object
  DIR/stage2.json   one question of each type per training image, with the caption for the MSE term,
                    plus the stage-1 rows again (measured: without the captions the content → position
                    lookup fades and "where is X ?" stays near 0.5; with them 0.82 after 800 steps)
                    With --quiz, stage 2's questions are instead one multi-turn row per training image
                    asking the colour and the shape of every object and the count (random order):
                    ~6 answers per sample where the single-question rows carry 1; the position
                    question stays a row of its own
                    With --contrast N, N more training images (images/cNNNNN.png) of 2-3 objects
                    that share one colour (every other image) or one shape, with their caption and
                    questions: no caption or question about them can name a cell by that attribute
                    alone. The world's own images and rows stay the same
                    With --wheres, stage 2 also asks "where is the <colour> <shape> ?" of every
                    object that shares its colour with another object of its image (the one
                    question already asked aside): answered only by binding the shape as well
  DIR/eval.json     the same questions on held-out images (never in stage1/stage2)
  DIR/tokenizer/    a word-level tokenizer (tokenizers WordLevel) trained on all the text
  DIR/world.json    the vocabulary of the world and the split sizes

Question types (`qtype` on each row): colour, shape, position, count. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random

from mage_fast.shapes.tool_tasks import tool_corpus
from mage_fast.shapes.world import (
    COLOURS,
    PLACES_PROMPT,
    POSITIONS,
    SHAPES,
    caption,
    draw_scene,
    places,
    questions,
    quiz,
    sample_contrast_scene,
    sample_scene,
    shared_colour_wheres,
    train_word_tokenizer,
)


def _row(rid: str, image: str, q: str, a: str, cap: str, qtype: str) -> dict:
    return {
        "id": rid,
        "image": image,
        "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}],
        "caption": cap,
        "qtype": qtype,
    }


def _quiz_row(rid: str, image: str, qas: list[tuple[str, str, str]], cap: str) -> dict:
    turns = []
    for k, (_, q, a) in enumerate(qas):
        turns += [{"from": "human", "value": f"<image>\n{q}" if k == 0 else q}, {"from": "gpt", "value": a}]
    return {"id": rid, "image": image, "conversations": turns, "caption": cap, "qtype": "quiz"}


def _train_rows(
    rid: str, rel: str, cap: str, desc: str | None, qas: list, quiz_qas: list | None, wheres: list
) -> tuple[list, list]:
    """(stage-1 rows, stage-2 question rows) of one training image; `wheres`: more position
    questions (world.shared_colour_wheres), one row each."""
    s1 = [_row(f"{rid}-caption", rel, "describe the image .", cap, cap, "caption")]
    if desc:  # the caption stays the MSE target: the same image, the same content
        s1.append(_row(f"{rid}-places", rel, PLACES_PROMPT, desc, cap, "places"))
    more = [_row(f"{rid}-where{k}", rel, q, a, cap, t) for k, (t, q, a) in enumerate(wheres)]
    if quiz_qas is not None:  # the quiz, and the position question in a row of its own
        s2 = [_quiz_row(f"{rid}-quiz", rel, quiz_qas, cap)]
        return s1, s2 + [_row(f"{rid}-{t}", rel, q, a, cap, t) for t, q, a in qas if t == "position"] + more
    return s1, [_row(f"{rid}-{t}", rel, q, a, cap, t) for t, q, a in qas] + more


def _wheres(objs: list, qas: list, on: bool) -> list:
    """The shared-colour position questions of one image (none unless `on`)."""
    asked = next(q for t, q, _ in qas if t == "position")
    return shared_colour_wheres(objs, asked) if on else []


def _contrast_rows(
    out: str, n: int, seed: int, size: int, with_places: bool, with_quiz: bool, with_wheres: bool
) -> tuple[list, list]:
    """(stage-1 rows, stage-2 rows) of n contrast images (world.sample_contrast_scene), drawn from
    their own random stream after the world's, so the world's own images and rows stay the same."""
    rng = random.Random(f"contrast-{seed}")
    s1, s2 = [], []
    for k in range(n):
        objs = sample_contrast_scene(rng, k)
        rel = f"images/c{k:05d}.png"
        draw_scene(objs, size, rng).save(os.path.join(out, rel))
        desc = places(objs, rng) if with_places else None
        cap = caption(objs, rng)  # the draws in this order: the world is the same with or without wheres
        qas = questions(objs, rng)
        rows = _train_rows(
            f"c{k:05d}", rel, cap, desc, qas, quiz(objs, rng) if with_quiz else None, _wheres(objs, qas, with_wheres)
        )
        s1 += rows[0]
        s2 += rows[1]
    return s1, s2


def generate(
    out: str,
    n: int,
    seed: int,
    size: int = 48,
    eval_fraction: float = 0.05,
    with_places: bool = False,
    with_quiz: bool = False,
    contrast: int = 0,
    with_wheres: bool = False,
) -> dict:
    """Write the world to `out`; returns the summary also saved as world.json. `with_places` adds a
    position-first description row per training image to stage 1 (and so to stage 2); `with_quiz`
    puts stage 2's questions as one multi-turn row per training image (world.quiz); `contrast`
    adds that many training images whose objects share one colour or one shape; `with_wheres` adds
    to stage 2 a "where is X ?" for every object that shares its colour with another (not the one
    already asked). The world's images, captions and eval rows are the same either way."""
    if n < 20:
        raise ValueError(f"--n must be at least 20 (got {n}): the eval split needs images too")
    if contrast < 0:
        raise ValueError(f"--contrast must be >= 0 (got {contrast})")
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    n_eval = max(10, int(n * eval_fraction))
    stage1, stage2, evals, texts = [], [], [], []
    place_rng = random.Random(f"places-{seed}")  # its own draws: the world is the same with or without
    quiz_rng = random.Random(f"quiz-{seed}")
    for i in range(n):
        objs = sample_scene(rng)
        rel = f"images/{i:05d}.png"
        draw_scene(objs, size, rng).save(os.path.join(out, rel))
        cap = caption(objs, rng)
        qs = questions(objs, rng)
        desc = places(objs, place_rng) if with_places else None
        texts.extend([cap] + ([desc] if desc else []))
        texts.extend(f"{q} {a}" for _, q, a in qs)
        if i < n - n_eval:
            quiz_qas = quiz(objs, quiz_rng) if with_quiz else None
            rows = _train_rows(f"{i:05d}", rel, cap, desc, qs, quiz_qas, _wheres(objs, qs, with_wheres))
            stage1 += rows[0]
            stage2 += rows[1]
        else:
            evals.extend(_row(f"{i:05d}-{t}", rel, q, a, cap, t) for t, q, a in qs)
    more1, more2 = _contrast_rows(out, contrast, seed, size, with_places, with_quiz, with_wheres)  # no new words
    stage1, stage2 = stage1 + more1, stage2 + more2
    texts += ["describe the image ."] + ([PLACES_PROMPT] if with_places else [])
    texts.extend(tool_corpus())  # the tool rows' words and JSON punctuation (stage 3)
    for name, rows in (("stage1", stage1), ("stage2", stage2 + stage1), ("eval", evals)):
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(rows, f)
    train_word_tokenizer(texts, os.path.join(out, "tokenizer"))
    world = {
        "seed": seed, "n_images": n, "n_eval_images": n_eval, "image_size": size,
        "colours": list(COLOURS), "shapes": list(SHAPES), "positions": list(POSITIONS),
        "places": with_places, "quiz": with_quiz, "contrast": contrast, "wheres": with_wheres,
        "splits": {"stage1": len(stage1), "stage2": len(stage2), "eval": len(evals)},
    }  # fmt: skip
    with open(os.path.join(out, "world.json"), "w") as f:
        json.dump(world, f, indent=1)
    return world


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=6000, help="number of images (train + eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48, help="image side in pixels (a multiple of 3)")
    p.add_argument("--places", action="store_true", help="also a position-first description per training image")
    p.add_argument("--quiz", action="store_true", help="stage 2: one row of questions per image")
    p.add_argument(
        "--contrast",
        type=int,
        default=0,
        help="this many more training images whose 2-3 objects share one colour or one shape",
    )
    p.add_argument(
        "--wheres",
        action="store_true",
        help='stage 2: also "where is X ?" of every object that shares its colour with another',
    )
    a = p.parse_args(argv)
    world = generate(
        a.out, a.n, a.seed, a.size, with_places=a.places, with_quiz=a.quiz, contrast=a.contrast, with_wheres=a.wheres
    )
    print(json.dumps(world["splits"]), "->", a.out)


if __name__ == "__main__":
    main()
