"""The shapes world: colours, shapes and a 3×3 grid of positions; scenes of 1–4 objects, their
drawing, captions, place descriptions and questions; the word tokenizer over the world's text.
Every writer of shapes data (scenes, multi, tool_tasks) and the built-in tools draw with it."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (235, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
COUNT_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
CANONICAL_HALF = 0.37  # half-size of a shape drawn without jitter, in cells
# Words the chat templates add around the text; the word tokenizer must know them.
TEMPLATE_WORDS = ("USER", "ASSISTANT", "SYSTEM", "TOOL", ":", "\n")
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PLACES_PROMPT = "describe each place ."


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    cell: int  # 0..8, row-major in the 3×3 grid

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


def draw_shape(
    d: ImageDraw.ImageDraw, shape: str, fill: tuple[int, int, int], cx: float, cy: float, half: float
) -> None:
    """One shape of half-size ``half`` centred on (cx, cy)."""
    box = (cx - half, cy - half, cx + half, cy + half)
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)


def draw_scene(objs: list[Obj], size: int, rng: random.Random | None) -> Image.Image:
    """Render objects on a black canvas; each shape jitters a little inside its cell. Without
    ``rng`` every shape sits at its cell's centre with one size (the tools' canonical drawing)."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    d = ImageDraw.Draw(img)
    cell = size / 3
    for o in objs:
        r, c = divmod(o.cell, 3)
        if rng is None:
            half, cx, cy = cell * CANONICAL_HALF, (c + 0.5) * cell, (r + 0.5) * cell
        else:
            half = cell * rng.uniform(0.32, 0.42)
            cx = (c + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
            cy = (r + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        draw_shape(d, o.shape, COLOURS[o.colour], cx, cy, half)
    return img


def _placed(pairs: list[tuple[str, str]], cells: list[int]) -> list[Obj]:
    """(colour, shape) pairs put in their cells, in grid order."""
    return sorted((Obj(c, s, cell) for (c, s), cell in zip(pairs, cells)), key=lambda o: o.cell)


def sample_scene(rng: random.Random) -> list[Obj]:
    n = rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), n)
    pairs = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    return _placed(pairs, cells)


def sample_contrast_scene(rng: random.Random, k: int) -> list[Obj]:
    """2–3 objects that share one colour (even k) or one shape (odd k): a caption or a question
    about such a scene cannot tell its objects apart by the shared attribute alone."""
    n = rng.randint(2, 3)
    cells = rng.sample(range(9), n)
    if k % 2 == 0:
        colour = rng.choice(list(COLOURS))
        pairs = [(colour, s) for s in rng.sample(SHAPES, n)]
    else:
        shape = rng.choice(SHAPES)
        pairs = [(c, shape) for c in rng.sample(list(COLOURS), n)]
    return _placed(pairs, cells)


def caption(objs: list[Obj], rng: random.Random) -> str:
    """Objects in random order: naming an object then its cell trains the content → position
    lookup that "where is the red circle ?" needs (in grid order a model can just walk the grid)."""
    order = rng.sample(objs, len(objs))
    return " , ".join(f"a {o.colour} {o.shape} at {o.position}" for o in order) + " ."


def places(objs: list[Obj], rng: random.Random) -> str:
    """Cells in random order, each naming its object: "at center is a blue square , ..." trains the
    position → content lookup of "what color is the shape at center ?" once per object."""
    order = rng.sample(objs, len(objs))
    return " , ".join(f"at {o.position} is a {o.colour} {o.shape}" for o in order) + " ."


def quiz(objs: list[Obj], rng: random.Random) -> list[tuple[str, str, str]]:
    """The colour and the shape of every object and the count, in random order: one image answers
    2n + 1 questions. No "where is X ?": its answer names an object's cell and content together,
    so a later colour or shape question about that cell could be copied from the conversation
    instead of read from the image (the position lookup trains on the captions)."""
    qs = [("count", "how many shapes are there ?", COUNT_WORDS[len(objs)])]
    for o in objs:
        qs += [
            ("colour", f"what color is the shape at {o.position} ?", o.colour),
            ("shape", f"what shape is at {o.position} ?", o.shape),
        ]
    return rng.sample(qs, len(qs))


def questions(objs: list[Obj], rng: random.Random) -> list[tuple[str, str, str]]:
    """One (qtype, question, answer) per type, about a randomly chosen object."""
    o = rng.choice(objs)
    return [
        ("colour", f"what color is the shape at {o.position} ?", o.colour),
        ("shape", f"what shape is at {o.position} ?", o.shape),
        ("position", f"where is the {o.colour} {o.shape} ?", o.position),
        ("count", "how many shapes are there ?", COUNT_WORDS[len(objs)]),
    ]


def shared_colour_wheres(objs: list[Obj], asked: str) -> list[tuple[str, str, str]]:
    """A "where is the <colour> <shape> ?" for every object that shares its colour with another
    object of the image, but the one already asked (``asked``, the question's text): answered only
    by binding the shape too, the lookup a colour-only match gets wrong one time in two."""
    qs = []
    for o in objs:
        q = f"where is the {o.colour} {o.shape} ?"
        if q != asked and any(p.colour == o.colour and p != o for p in objs):
            qs.append(("position", q, o.position))
    return qs


def train_word_tokenizer(texts: list[str], out_dir: str) -> None:
    """A word-level tokenizer over the world's text, saved as a HF tokenizer folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
    tok.train_from_iterator(texts + [" ".join(TEMPLATE_WORDS)], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.save_pretrained(out_dir)
