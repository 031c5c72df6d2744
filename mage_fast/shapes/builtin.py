"""The shapes world's tools, drawn by the world's own code (:func:`mage_fast.shapes.world.draw_scene`).

- ``render_scene(objects)``: objects ``{"shape", "colour", "position"}`` → a PNG, each shape at its
  cell's centre with one size (no jitter: the same objects always give the same pixels).
- ``edit_scene(edits)``: the conversation's last image → its scene (per cell: the palette colour
  with most pixels, and the shape from how much of its bounding box it fills), the edits applied in
  order (``recolour`` / ``move`` / ``remove`` an object named by colour and shape, ``add`` one at a
  position), drawn again like ``render_scene``. A bad edit (no such object, an occupied cell)
  raises, which the executor turns into an error observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from mage_fast.shapes.world import COLOURS, POSITIONS, SHAPES, Obj, draw_scene

IMAGE_SIZE = 48


def _list_tool(name: str, description: str, key: str, item: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """A tool taking one argument ``key``: a non-empty list of objects with enum fields ``item``."""
    obj = {"type": "object", "properties": {k: {"enum": v} for k, v in item.items()}, "required": required}
    params = {"type": "object", "properties": {key: {"type": "array", "minItems": 1, "items": obj}}, "required": [key]}
    return {"name": name, "description": description, "parameters": params}


_FIELDS = {"shape": list(SHAPES), "colour": list(COLOURS)}
RENDER_SCHEMA = _list_tool(
    "render_scene", "draw shapes", "objects", _FIELDS | {"position": list(POSITIONS)}, ["shape", "colour", "position"]
)
EDIT_SCHEMA = _list_tool(
    "edit_scene",
    "edit the last image",
    "edits",
    {"op": ["recolour", "move", "remove", "add"], **_FIELDS, "to": list(COLOURS) + list(POSITIONS)},
    ["op", "shape", "colour"],
)


def scene_image(objs: list[Obj], size: int = IMAGE_SIZE) -> Image.Image:
    """Objects → the canonical drawing; two objects in one cell raise."""
    cells = [o.cell for o in objs]
    if len(set(cells)) != len(cells):
        raise ValueError("two objects in one position")
    return draw_scene(sorted(objs, key=lambda o: o.cell), size, None)


def render_scene(objects: list[dict[str, Any]]) -> Image.Image:
    """``objects`` → PNG image (IMAGE_SIZE × IMAGE_SIZE)."""
    return scene_image([Obj(o["colour"], o["shape"], POSITIONS.index(o["position"])) for o in objects])


def read_scene(img: Image.Image) -> list[Obj]:
    """A shapes-world image (jittered or canonical) → its objects, one per occupied cell."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    size = a.shape[0]
    out = []
    for cell in range(9):
        r, c = divmod(cell, 3)
        win = a[r * size // 3 : (r + 1) * size // 3, c * size // 3 : (c + 1) * size // 3]
        counts = {name: (win == rgb).all(-1) for name, rgb in COLOURS.items()}
        name, mask = max(counts.items(), key=lambda kv: int(kv[1].sum()))
        if mask.sum() < 4:  # empty, or a neighbour's edge pixel
            continue
        ys, xs = np.nonzero(mask)
        fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        shape = "square" if fill > 0.9 else "circle" if fill > 0.66 else "triangle"
        out.append(Obj(name, shape, cell))
    return out


def _find(objs: list[Obj], colour: str, shape: str) -> Obj:
    for o in objs:
        if (o.colour, o.shape) == (colour, shape):
            return o
    raise ValueError(f"there is no {colour} {shape} in the image")


def apply_edit(objs: list[Obj], e: dict[str, Any]) -> list[Obj]:
    """One edit on a scene → the new scene; ValueError when it cannot apply."""
    op, to = e["op"], e.get("to")
    if op == "add":
        if to not in POSITIONS:
            raise ValueError("add needs a position in 'to'")
        if any(o.cell == POSITIONS.index(to) for o in objs) or any(
            (o.colour, o.shape) == (e["colour"], e["shape"]) for o in objs
        ):
            raise ValueError(f"cannot add a {e['colour']} {e['shape']} at {to}: taken")
        return objs + [Obj(e["colour"], e["shape"], POSITIONS.index(to))]
    o = _find(objs, e["colour"], e["shape"])
    rest = [x for x in objs if x is not o]
    if op == "remove":
        return rest
    if op == "recolour":
        if to not in COLOURS or any((x.colour, x.shape) == (to, o.shape) for x in rest):
            raise ValueError(f"cannot recolour to {to!r}")
        return rest + [Obj(to, o.shape, o.cell)]
    if to not in POSITIONS or any(x.cell == POSITIONS.index(to) for x in rest):
        raise ValueError(f"cannot move to {to!r}")
    return rest + [Obj(o.colour, o.shape, POSITIONS.index(to))]


def edit_scene(edits: list[dict[str, Any]], images: list[Image.Image]) -> Image.Image:
    """The conversation's last image, edited → PNG image."""
    if not images:
        raise ValueError("edit_scene needs an image in the conversation")
    objs = read_scene(images[-1])
    for e in edits:
        objs = apply_edit(objs, e)
    return scene_image(objs, images[-1].size[0])
