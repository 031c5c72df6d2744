"""Multi-image tasks in the shapes world: group captioning, change captioning, storytelling.

    python -m mage_fast.shapes.multi --out DIR --n N --seed S [--objects 4 6]

N sets per task for training plus held-out sets (never-seen scenes, their own image files). The
tasks are built so that what links a set's images is not what an image-by-image extraction keeps
(SAM's motivation): every scene is crowded (``--objects`` per scene, default 4-6 of the 9 cells),
and the one object the answer is about is drawn small (``--link-half``, in cells) while the others
are drawn large. Seen alone, an image does not say which of its objects matters; only the set does.

- group (2-4 scenes): one (colour, shape) is in every scene, small, at any cell; no other pair is
  in all. "what do the scenes share ?" → "every scene has a red circle ."
- change (2 scenes): near-identical, the unchanged objects drawn pixel for pixel alike; one small
  object moved, recoloured, added or removed. "what changed ?" → "the red circle moved from top
  left to center ." | "the red circle turned blue ." | "a green square appeared at top ." | "the
  blue triangle disappeared from left ."
- story (3 scenes): one small object moves or changes colour from scene to scene, the others stay
  (drawn alike). "tell the story ." → "a red circle is at top left . then it moves to center .
  then it turns blue ."

Images come first in the prompt, one ``<image>`` line each, in order; each image carries its own
scene caption (shapes.world's wording) for the MSE term. Written: DIR/images/, DIR/train.json,
DIR/eval.json (``task``/``qtype``, ``refs`` and ``link`` (the linked object per image, or null)
per row, for ``mage_fast.apps.caption_score`` and the guidance maps), DIR/tokenizer/ (shapes.world's word
tokenizer trained on this world's text), DIR/world.json. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

from mage_fast.shapes.world import COLOURS, SHAPES, Obj, caption, draw_shape, train_word_tokenizer

TASKS = ("group", "change", "story")
PROMPTS = {"group": "what do the scenes share ?", "change": "what changed ?", "story": "tell the story ."}
STORY_LEN = 3
Scenes = list[list[Obj]]
Pair = tuple[str, str]


@dataclass(frozen=True)
class Design:
    """How crowded a scene is and how small the linked object is drawn."""

    min_objects: int = 4
    max_objects: int = 6
    link_half: float = 0.2  # half-size of the linked object, in cells (others 0.32-0.42)

    def __post_init__(self) -> None:
        if not 2 <= self.min_objects <= self.max_objects <= 7:
            raise ValueError(
                f"objects per scene must satisfy 2 <= min <= max <= 7, got {self.min_objects}-{self.max_objects}"
            )
        if not 0.05 <= self.link_half <= 0.45:
            raise ValueError(f"link_half must be in [0.05, 0.45] cells, got {self.link_half}")


class Task:
    """One set under construction: its scenes, answer and the pairs drawn small."""

    def __init__(self, rng: random.Random, design: Design):
        self.rng, self.design = rng, design
        self.small: dict[Pair, Pair] = {}  # a small pair -> the identity whose look it shares

    def count(self) -> int:
        return self.rng.randint(self.design.min_objects, self.design.max_objects)

    def add(self, objs: list[Obj], k: int, banned: set[Pair]) -> list[Obj]:
        """objs plus up to k objects in free cells with pairs new to the scene and not banned."""
        used = {(o.colour, o.shape) for o in objs} | banned
        free = [c for c in range(9) if c not in {o.cell for o in objs}]
        pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in used]
        k = min(k, len(free), len(pairs))
        new = [Obj(c, s, cell) for (c, s), cell in zip(self.rng.sample(pairs, k), self.rng.sample(free, k))]
        return sorted(objs + new, key=lambda o: o.cell)


def group_task(t: Task) -> tuple[Scenes, str]:
    """2-4 crowded scenes sharing exactly one (colour, shape), drawn small."""
    n = t.rng.randint(2, 4)
    link = (t.rng.choice(list(COLOURS)), t.rng.choice(SHAPES))
    t.small[link] = link
    scenes: Scenes = []
    seen_in_all: set[Pair] | None = None
    for i in range(n):
        # the last scene avoids every pair the others all share, so the answer is unique
        banned = (seen_in_all or set()) - {link} if i == n - 1 else set()
        objs = t.add([Obj(*link, t.rng.randrange(9))], t.count() - 1, banned)
        pairs = {(o.colour, o.shape) for o in objs}
        seen_in_all = pairs if seen_in_all is None else seen_in_all & pairs
        scenes.append(objs)
    return scenes, f"every scene has a {link[0]} {link[1]} ."


def change_task(t: Task) -> tuple[Scenes, str]:
    """Two near-identical scenes, one small object changed: move, recolour, appear or disappear."""
    kind = t.rng.choice(("move", "recolour", "appear", "disappear"))
    first = t.add([], t.count() - (kind == "appear"), set())
    if kind == "appear":
        second = t.add(first, 1, set())
        o = next(x for x in second if x not in first)
        t.small[(o.colour, o.shape)] = (o.colour, o.shape)
        return [first, second], f"a {o.colour} {o.shape} appeared at {o.position} ."
    o = t.rng.choice(first)
    t.small[(o.colour, o.shape)] = (o.colour, o.shape)
    rest = [x for x in first if x != o]
    if kind == "disappear":
        return [first, rest], f"the {o.colour} {o.shape} disappeared from {o.position} ."
    moved, kind = _step(t, o, rest, "move" if kind == "move" else "turn")
    text = (
        f"the {o.colour} {o.shape} moved from {o.position} to {moved.position} ."
        if kind == "move"
        else f"the {o.colour} {o.shape} turned {moved.colour} ."
    )
    return [first, sorted(rest + [moved], key=lambda x: x.cell)], text


def _step(t: Task, o: Obj, rest: list[Obj], kind: str) -> tuple[Obj, str]:
    """(o after the step, the step's kind): moved to a free cell, or recoloured to a colour whose
    (colour, shape) is new to the scene; a recolour with no such colour left is a move. The new
    state is drawn small, with the look of the object it came from."""
    taken = {(x.colour, x.shape) for x in rest}
    colours = [c for c in COLOURS if c != o.colour and (c, o.shape) not in taken]
    free = [c for c in range(9) if c != o.cell and c not in {x.cell for x in rest}]
    if kind == "turn" and colours or not free:
        new, kind = Obj(t.rng.choice(colours), o.shape, o.cell), "turn"
    else:
        new, kind = Obj(o.colour, o.shape, t.rng.choice(free)), "move"
    t.small[(new.colour, new.shape)] = t.small[(o.colour, o.shape)]
    return new, kind


def story_task(t: Task) -> tuple[Scenes, str]:
    """STORY_LEN crowded scenes; one small object moves or changes colour each time, the others stay."""
    scene = t.add([], t.count(), set())
    o = t.rng.choice(scene)
    t.small[(o.colour, o.shape)] = (o.colour, o.shape)
    rest = [x for x in scene if x != o]
    scenes, text = [scene], [f"a {o.colour} {o.shape} is at {o.position} ."]
    for _ in range(STORY_LEN - 1):
        o, kind = _step(t, o, rest, t.rng.choice(("move", "turn")))
        scenes.append(sorted(rest + [o], key=lambda x: x.cell))
        text.append(f"then it moves to {o.position} ." if kind == "move" else f"then it turns {o.colour} .")
    return scenes, " ".join(text)


MAKERS: dict[str, Callable[[Task], tuple[Scenes, str]]] = {
    "group": group_task, "change": change_task, "story": story_task,
}  # fmt: skip


def draw_set(
    scenes: Scenes, small: dict[Pair, Pair], size: int, design: Design, rng: random.Random
) -> list[Image.Image]:
    """The set's images: each (colour, shape) keeps one size and jitter in every scene it is in
    (so an unchanged object is drawn pixel for pixel alike); small pairs get ``link_half``."""
    looks: dict[Pair, tuple[float, float, float]] = {}
    cell = size / 3
    images = []
    for objs in scenes:
        img = Image.new("RGB", (size, size), (0, 0, 0))
        d = ImageDraw.Draw(img)
        for o in objs:
            key = small.get((o.colour, o.shape), (o.colour, o.shape))
            if key not in looks:
                half = design.link_half if (o.colour, o.shape) in small else rng.uniform(0.32, 0.42)
                looks[key] = (half, rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08))
            half, dx, dy = looks[key]
            r, c = divmod(o.cell, 3)
            draw_shape(d, o.shape, COLOURS[o.colour], (c + 0.5 + dx) * cell, (r + 0.5 + dy) * cell, half * cell)
        images.append(img)
    return images


def _row(rid: str, task: str, images: list[str], caps: list[str], answer: str, link: list) -> dict:
    prompt = "\n".join(["<image>"] * len(images) + [PROMPTS[task]])
    return {
        "id": rid, "task": task, "qtype": task, "image": images, "caption": caps, "refs": [answer],
        "link": link,
        "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}],
    }  # fmt: skip


def _links(scenes: Scenes, small: dict[Pair, Pair]) -> list:
    """Per image, the small (linked) object as [colour, shape, cell], or None where it is absent."""
    return [next(([o.colour, o.shape, o.cell] for o in objs if (o.colour, o.shape) in small), None) for objs in scenes]


def generate(out: str, n: int, seed: int, size: int = 48, n_eval: int = 50, design: Design = Design()) -> dict:
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
                t = Task(rng, design)
                scenes, answer = MAKERS[task](t)
                images = []
                for img in draw_set(scenes, t.small, size, design, rng):
                    images.append(f"images/{k:06d}.png")
                    img.save(os.path.join(out, images[-1]))
                    k += 1
                caps = [caption(objs, rng) for objs in scenes]
                rid = f"{split}-{i:05d}-{task}"
                splits[split].append(_row(rid, task, images, caps, answer, _links(scenes, t.small)))
                texts += caps + [answer, PROMPTS[task]]
    for split, rows in splits.items():
        with open(os.path.join(out, f"{split}.json"), "w") as f:
            json.dump(rows, f)
    train_word_tokenizer(texts, os.path.join(out, "tokenizer"))
    world = {"seed": seed, "image_size": size, "tasks": list(TASKS), "n_images": k, "design": asdict(design),
             "splits": {s: len(r) for s, r in splits.items()}}  # fmt: skip
    with open(os.path.join(out, "world.json"), "w") as f:
        json.dump(world, f, indent=1)
    return world


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.shapes.multi", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=2000, help="training sets per task")
    p.add_argument("--n-eval", type=int, default=50, help="held-out sets per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48, help="image side in pixels (a multiple of 3)")
    p.add_argument("--objects", type=int, nargs=2, default=(4, 6), metavar=("MIN", "MAX"), help="objects per scene")
    p.add_argument("--link-half", type=float, default=0.2, help="half-size of the linked object, in cells")
    a = p.parse_args(argv)
    world = generate(a.out, a.n, a.seed, a.size, a.n_eval, Design(*a.objects, a.link_half))
    print(json.dumps(world["splits"]), "->", a.out)


if __name__ == "__main__":
    main()
