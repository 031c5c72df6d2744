"""Multi-image tasks in the shapes world: group captioning, change captioning, storytelling.

    python -m mage_fast.data.shapes_multi --out DIR --n N --seed S

N sets per task for training plus held-out sets (never-seen scenes, their own image files):

- group (2-4 scenes): one (colour, shape) is in every scene, at any cell; no other pair is in all.
  "what do the scenes share ?" → "every scene has a red circle ."
- change (2 scenes): the second is the first with one object moved, recoloured, added or removed.
  "what changed ?" → "the red circle moved from top left to center ." | "the red circle turned
  blue ." | "a green square appeared at top ." | "the blue triangle disappeared from left ."
- story (3 scenes): one object moves or changes colour from scene to scene, the others stay.
  "tell the story ." → "a red circle is at top left . then it moves to center . then it turns blue ."

Images come first in the prompt, one ``<image>`` line each, in order; each image carries its own
scene caption (shapes.py's wording) for the MSE term. Written: DIR/images/, DIR/train.json,
DIR/eval.json (``task``/``qtype`` and ``refs`` per row, for ``mage_fast.score``), DIR/tokenizer/
(shapes.py's word tokenizer trained on this world's text), DIR/world.json. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable

from .shapes import COLOURS, MAX_OBJECTS, SHAPES, Obj, caption, draw_scene, train_word_tokenizer

TASKS = ("group", "change", "story")
PROMPTS = {"group": "what do the scenes share ?", "change": "what changed ?", "story": "tell the story ."}
STORY_LEN = 3
Scenes = list[list[Obj]]


def _add_objects(rng: random.Random, objs: list[Obj], k: int, banned: set[tuple[str, str]]) -> list[Obj]:
    """objs plus k objects in free cells with (colour, shape) pairs new to the scene and not banned."""
    used = {(o.colour, o.shape) for o in objs} | banned
    free = [c for c in range(9) if c not in {o.cell for o in objs}]
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in used]
    new = [Obj(c, s, cell) for (c, s), cell in zip(rng.sample(pairs, k), rng.sample(free, k))]
    return sorted(objs + new, key=lambda o: o.cell)


def group_task(rng: random.Random) -> tuple[Scenes, str]:
    """2-4 scenes sharing exactly one (colour, shape)."""
    n = rng.randint(2, 4)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    scenes: Scenes = []
    seen_in_all: set[tuple[str, str]] | None = None
    for i in range(n):
        # the last scene avoids every pair the others all share, so the answer is unique
        banned = (seen_in_all or set()) if i == n - 1 else set()
        base = [Obj(colour, shape, rng.randrange(9))]
        objs = _add_objects(rng, base, rng.randint(0, MAX_OBJECTS - 1), banned - {(colour, shape)})
        pairs = {(o.colour, o.shape) for o in objs}
        seen_in_all = pairs if seen_in_all is None else seen_in_all & pairs
        scenes.append(objs)
    return scenes, f"every scene has a {colour} {shape} ."


def change_task(rng: random.Random) -> tuple[Scenes, str]:
    """Two scenes, one change: move, recolour, appear or disappear."""
    kind = rng.choice(("move", "recolour", "appear", "disappear"))
    lo = 2 if kind == "disappear" else 1
    hi = MAX_OBJECTS - 1 if kind == "appear" else MAX_OBJECTS
    first = _add_objects(rng, [], rng.randint(lo, hi), set())
    if kind == "appear":
        second = _add_objects(rng, first, 1, set())
        o = next(x for x in second if x not in first)
        return [first, second], f"a {o.colour} {o.shape} appeared at {o.position} ."
    o = rng.choice(first)
    rest = [x for x in first if x != o]
    if kind == "disappear":
        return [first, rest], f"the {o.colour} {o.shape} disappeared from {o.position} ."
    moved, kind = _step(rng, o, rest, "move" if kind == "move" else "turn")
    text = (
        f"the {o.colour} {o.shape} moved from {o.position} to {moved.position} ."
        if kind == "move"
        else f"the {o.colour} {o.shape} turned {moved.colour} ."
    )
    return [first, sorted(rest + [moved], key=lambda x: x.cell)], text


def _step(rng: random.Random, o: Obj, rest: list[Obj], kind: str) -> tuple[Obj, str]:
    """(o after the step, the step's kind): moved to a free cell, or recoloured to a colour whose
    (colour, shape) is new to the scene; a recolour with no such colour left is a move."""
    taken = {(x.colour, x.shape) for x in rest}
    colours = [c for c in COLOURS if c != o.colour and (c, o.shape) not in taken]
    if kind == "turn" and colours:
        return Obj(rng.choice(colours), o.shape, o.cell), "turn"
    free = [c for c in range(9) if c != o.cell and c not in {x.cell for x in rest}]
    return Obj(o.colour, o.shape, rng.choice(free)), "move"


def story_task(rng: random.Random) -> tuple[Scenes, str]:
    """STORY_LEN scenes; one object moves or changes colour each time, the others stay."""
    scene = _add_objects(rng, [], rng.randint(1, MAX_OBJECTS), set())
    o = rng.choice(scene)
    rest = [x for x in scene if x != o]
    scenes, text = [scene], [f"a {o.colour} {o.shape} is at {o.position} ."]
    for _ in range(STORY_LEN - 1):
        o, kind = _step(rng, o, rest, rng.choice(("move", "turn")))
        scenes.append(sorted(rest + [o], key=lambda x: x.cell))
        text.append(f"then it moves to {o.position} ." if kind == "move" else f"then it turns {o.colour} .")
    return scenes, " ".join(text)


MAKERS: dict[str, Callable[[random.Random], tuple[Scenes, str]]] = {
    "group": group_task, "change": change_task, "story": story_task,
}  # fmt: skip


def _row(rid: str, task: str, images: list[str], caps: list[str], answer: str) -> dict:
    prompt = "\n".join(["<image>"] * len(images) + [PROMPTS[task]])
    return {
        "id": rid, "task": task, "qtype": task, "image": images, "caption": caps, "refs": [answer],
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
    }  # fmt: skip


def generate(out: str, n: int, seed: int, size: int = 48, n_eval: int = 50) -> dict:
    """Write n training sets and n_eval held-out sets per task to `out`; returns world.json's dict."""
    if n < 1 or n_eval < 1:
        raise ValueError(f"--n and --n-eval must be >= 1 (got {n}, {n_eval})")
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    splits: dict[str, list[dict]] = {"train": [], "eval": []}
    texts, k = [], 0
    for split, count in (("train", n), ("eval", n_eval)):
        for i in range(count):
            for task in TASKS:
                scenes, answer = MAKERS[task](rng)
                images, caps = [], []
                for objs in scenes:
                    rel = f"images/{k:06d}.png"
                    draw_scene(objs, size, rng).save(os.path.join(out, rel))
                    images.append(rel)
                    caps.append(caption(objs, rng))
                    k += 1
                splits[split].append(_row(f"{split}-{i:05d}-{task}", task, images, caps, answer))
                texts += caps + [answer, PROMPTS[task]]
    for split, rows in splits.items():
        with open(os.path.join(out, f"{split}.json"), "w") as f:
            json.dump(rows, f)
    train_word_tokenizer(texts, os.path.join(out, "tokenizer"))
    world = {"seed": seed, "image_size": size, "tasks": list(TASKS), "n_images": k,
             "splits": {s: len(r) for s, r in splits.items()}}  # fmt: skip
    with open(os.path.join(out, "world.json"), "w") as f:
        json.dump(world, f, indent=1)
    return world


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.data.shapes_multi", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=2000, help="training sets per task")
    p.add_argument("--n-eval", type=int, default=50, help="held-out sets per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48, help="image side in pixels (a multiple of 3)")
    a = p.parse_args(argv)
    world = generate(a.out, a.n, a.seed, a.size, a.n_eval)
    print(json.dumps(world["splits"]), "->", a.out)


if __name__ == "__main__":
    main()
