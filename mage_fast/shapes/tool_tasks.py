"""Tool-calling rows for the shapes world (stage 3 of the demo), executed by the real tools.

    python -m mage_fast.shapes.tool_tasks --out DIR --n N --seed S

Kinds (``qtype`` of each row), every row carrying the ``render_scene`` and ``edit_scene`` schemas:

  draw           "draw a red circle at top left and a blue square at center ." → render_scene
  edit           "<image> make the red circle blue ." (or move / remove / add; one or two edits)
                 → edit_scene on the input image
  edit_describe  "<image> remove the red circle , then describe the image ." → edit_scene, then
                 the caption of the edited image (objects in grid order)
  none           a question the image answers (colour / shape / position / count / describe):
                 no call, so the model learns not to over-call

Argument keys follow the request's word order ("a red circle at top" -> colour, shape, position;
"make the red circle blue" -> op, colour, shape, to): the model copies the values in the order it
reads them (JSON objects are unordered, so the calls are the same to the tools and the scorer).

The observation images are what the tools return for the reference calls (saved as PNGs), so
``target`` (the last tool image of a row) is what a correct call must reproduce pixel for pixel.
Written: DIR/images/*.png, DIR/train.json, DIR/eval.json (held-out input images and scenes).
Deterministic by seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from mage_fast.shapes.builtin import EDIT_SCHEMA, RENDER_SCHEMA, edit_scene, render_scene
from mage_fast.shapes.world import COLOURS, POSITIONS, SHAPES, Obj, draw_scene, questions, sample_scene
from mage_fast.toolcall.convert import calls_markup, response_markup, tools_block
from mage_fast.toolcall.format import Call, calls_value

TOOLS = [RENDER_SCHEMA, EDIT_SCHEMA]
KINDS = ("draw", "edit", "edit_describe", "none")
WEIGHTS = (0.25, 0.35, 0.15, 0.25)
DONE = "done ."


@dataclass
class Task:
    """One sampled request: the input scene (None for draw), the human text, the calls, the answer."""

    kind: str
    scene: list[Obj] | None
    question: str
    calls: list[Call] = field(default_factory=list)
    answer: str = DONE
    qtype: str = ""


def grid_caption(objs: list[Obj]) -> str:
    """Objects in grid order (one answer per scene, unlike the stage-1 captions' random order)."""
    return " , ".join(f"a {o.colour} {o.shape} at {o.position}" for o in sorted(objs, key=lambda o: o.cell)) + " ."


def _edit(objs: list[Obj], rng: random.Random) -> tuple[dict[str, Any], str, list[Obj]]:
    """A random edit that applies to ``objs`` → (edit arguments, its words, the scene after it)."""
    free = [c for c in range(9) if all(o.cell != c for o in objs)]
    pairs = {(o.colour, o.shape) for o in objs}
    recolours = [(o, c) for o in objs for c in COLOURS if (c, o.shape) not in pairs]
    ops = ["remove"] * (len(objs) > 1) + ["recolour"] * bool(recolours) + ["move", "add"] * bool(free)
    op = rng.choice(ops)
    if op == "add":
        c, s = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in pairs])
        cell = rng.choice(free)
        e = {"op": "add", "colour": c, "shape": s, "to": POSITIONS[cell]}
        return e, f"add a {c} {s} at {POSITIONS[cell]}", objs + [Obj(c, s, cell)]
    o, to = rng.choice(recolours) if op == "recolour" else (rng.choice(objs), None)
    rest = [x for x in objs if x is not o]
    e = {"op": op, "colour": o.colour, "shape": o.shape}
    if op == "remove":
        return e, f"remove the {o.colour} {o.shape}", rest
    if op == "recolour":
        return e | {"to": to}, f"make the {o.colour} {o.shape} {to}", rest + [Obj(to, o.shape, o.cell)]
    cell = rng.choice(free)
    moved = rest + [Obj(o.colour, o.shape, cell)]
    return e | {"to": POSITIONS[cell]}, f"move the {o.colour} {o.shape} to {POSITIONS[cell]}", moved


def sample_task(rng: random.Random) -> Task:
    """One request of a random kind (see the module docstring)."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    objs = sample_scene(rng)
    if kind == "draw":
        order = rng.sample(objs, len(objs))
        words = " and ".join(f"a {o.colour} {o.shape} at {o.position}" for o in order)
        args = {"objects": [{"colour": o.colour, "shape": o.shape, "position": o.position} for o in order]}
        return Task(kind, None, f"draw {words} .", [Call("render_scene", args)], qtype=kind)
    if kind == "none":
        qs = questions(objs, rng) + [("describe", "describe the image .", grid_caption(objs))]
        qtype, q, a = rng.choice(qs)
        return Task(kind, objs, f"<image>\n{q}", [], a, qtype)
    edits, words, scene = [], [], objs
    for _ in range(1 if kind == "edit_describe" or rng.random() < 0.8 else 2):
        e, w, scene = _edit(scene, rng)
        edits.append(e)
        words.append(w)
    q = " and ".join(words) + (" , then describe the image ." if kind == "edit_describe" else " .")
    answer = grid_caption(scene) if kind == "edit_describe" else DONE
    return Task(kind, objs, f"<image>\n{q}", [Call("edit_scene", {"edits": edits})], answer, kind)


def task_row(t: Task, rid: str, out: str, rng: random.Random, size: int = 48) -> dict[str, Any]:
    """A Task → a tool row, its images drawn (input, jittered) and produced (tool outputs)."""
    images = []
    if t.scene is not None:
        rel = f"images/{rid}-in.png"
        draw_scene(t.scene, size, rng).save(os.path.join(out, rel))
        images.append(rel)
    turns = [{"from": "human", "value": t.question}]
    if t.calls:
        (call,) = t.calls
        turns.append({"from": "function_call", "value": calls_value(t.calls)})
        if call.name == "render_scene":
            img = render_scene(**call.arguments)
        else:
            img = edit_scene(**call.arguments, images=[_load(os.path.join(out, images[-1]))])
        rel = f"images/{rid}-out.png"
        img.save(os.path.join(out, rel))
        images.append(rel)
        turns.append({"from": "observation", "value": "<image>"})
    turns.append({"from": "gpt", "value": t.answer})
    row = {"id": rid, "image": images, "tools": TOOLS, "conversations": turns, "kind": t.kind, "qtype": t.qtype}
    if t.calls:
        row["target"] = images[-1]
    return row


def _load(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def tool_corpus(n: int = 400, seed: int = 12345) -> list[str]:
    """Text of ``n`` sampled requests as the template renders it (tools block, calls, responses):
    the shapes world's word tokenizer trains on it so tool rows tokenize without unknowns."""
    rng = random.Random(seed)
    texts = [tools_block(TOOLS), response_markup("<image>"), "TOOL :"]
    for _ in range(n):
        t = sample_task(rng)
        texts += [t.question.replace("<image>", " "), t.answer, calls_markup(t.calls)]
    return texts


def generate_tools(out: str, n: int, seed: int, size: int = 48, n_eval: int | None = None) -> dict:
    """Write ``n`` rows (train + ``n_eval`` held-out, default 10 %) to ``out``; returns the split sizes."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    n_eval = max(8, n // 10) if n_eval is None else n_eval
    if not 0 < n_eval < n:
        raise ValueError(f"--n-eval must be in (0, {n}), got {n_eval}")
    rows = [task_row(sample_task(rng), f"t{i:05d}", out, rng, size) for i in range(n)]
    splits = {"train": rows[: n - n_eval], "eval": rows[n - n_eval :]}
    for name, part in splits.items():
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(part, f)
    counts = {name: {k: sum(r["kind"] == k for r in part) for k in KINDS} for name, part in splits.items()}
    with open(os.path.join(out, "tools_world.json"), "w") as f:
        json.dump({"seed": seed, "n": n, "splits": counts}, f, indent=1)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=3000, help="rows (train + eval)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--n-eval", type=int, default=None, help="held-out rows (default: 10 %% of --n)")
    a = p.parse_args(argv)
    print(json.dumps(generate_tools(a.out, a.n, a.seed, a.size, a.n_eval)), "->", a.out)


if __name__ == "__main__":
    main()
