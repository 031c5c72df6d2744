"""Multi-image rows from other formats → LLaVA rows (``image`` a list, one ``<image>`` per image).

    python -m mage_fast.data.multi --format sam|mantis --input IN --out OUT.json

- SAM's test format: ``{"id", "img_list": [paths], "instruction", "output"}``.
- Mantis-Instruct style: ``{"id", "images": [path | {"path": ...}], "conversation": [{"role":
  "user"|"assistant", "content"}]}``.

Placeholders: text that already holds one ``<image>`` per image keeps them where they are
(interleaved with the text); text with none gets them up front, one line each, in image order.
Any other count is an error, never a guess. LlavaDataset reads the result like any LLaVA row.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any

from mage_fast.data.llava import read_rows
from mage_fast.data.tokens import IMAGE_TOKEN

MANTIS_ROLES = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt", "system": "system"}


def place_images(text: str, n: int) -> str:
    """``text`` with exactly ``n`` placeholders: kept where present, else ``n`` lines up front."""
    found = text.count(IMAGE_TOKEN)
    if found == n:
        return text
    if found == 0:
        return "\n".join([IMAGE_TOKEN] * n + [text]) if n else text
    raise ValueError(f"{found} {IMAGE_TOKEN} placeholders for {n} images")


def _paths(items: Any, key: str) -> list[str]:
    if not isinstance(items, list) or not items:
        raise ValueError(f"{key} must be a non-empty list")
    out = [p.get("path") if isinstance(p, Mapping) else p for p in items]
    if not all(isinstance(p, str) and p for p in out):
        raise ValueError(f"{key} entries must be paths (strings or {{'path': ...}})")
    return out


def from_sam(row: Mapping[str, Any]) -> dict[str, Any]:
    """A SAM test row → a LLaVA row; ``output`` (str or list) becomes the answer (its first) and ``refs``."""
    images = _paths(row.get("img_list"), "img_list")
    out, instr = row.get("output"), row.get("instruction")
    refs = [out] if isinstance(out, str) else out
    if (
        not isinstance(instr, str)
        or not isinstance(refs, list)
        or not refs
        or not all(isinstance(r, str) for r in refs)
    ):
        raise ValueError("instruction must be a string and output a string or a list of strings")
    return {
        "id": str(row["id"]),
        "image": images,
        "conversations": [
            {"from": "human", "value": place_images(instr, len(images))},
            {"from": "gpt", "value": refs[0]},
        ],
        "refs": refs,
    }


def from_mantis(row: Mapping[str, Any]) -> dict[str, Any]:
    """A Mantis-style row → a LLaVA row; placeholders go to the first user turn when absent."""
    images = _paths(row.get("images"), "images")
    conv = row.get("conversation")
    if not isinstance(conv, list) or not conv:
        raise ValueError("conversation must be a non-empty list")
    turns = []
    for i, t in enumerate(conv):
        role, content = (t.get("role"), t.get("content")) if isinstance(t, Mapping) else (None, None)
        if role not in MANTIS_ROLES or not isinstance(content, str):
            raise ValueError(f"turn {i}: bad role {role!r} or non-string content")
        turns.append({"from": MANTIS_ROLES[role], "value": content})
    if sum(t["value"].count(IMAGE_TOKEN) for t in turns) == 0:
        first = next((t for t in turns if t["from"] == "human"), None)
        if first is None:
            raise ValueError("no user turn for the image placeholders")
        first["value"] = place_images(first["value"], len(images))
    return {"id": str(row["id"]), "image": images, "conversations": turns}


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {"sam": from_sam, "mantis": from_mantis}


def convert(rows: list[Any], fmt: str) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(converted rows, {id: reason} of the rows skipped). Placeholder counts are checked again by
    LlavaDataset; a row whose ``id`` is missing is skipped under its position."""
    fn, out, skipped = CONVERTERS[fmt], [], {}
    for i, row in enumerate(rows):
        sid = str(row.get("id", f"row {i}")) if isinstance(row, Mapping) else f"row {i}"
        try:
            if not isinstance(row, Mapping) or row.get("id") is None:
                raise ValueError("row is not an object with an id")
            out.append(fn(row))
        except ValueError as e:
            skipped[sid] = str(e)
    return out, skipped


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.data.multi", description=__doc__.split("\n\n")[0])
    p.add_argument("--format", required=True, choices=sorted(CONVERTERS))
    p.add_argument("--input", required=True, help="JSON list or JSONL")
    p.add_argument("--out", required=True, help="LLaVA JSON list")
    a = p.parse_args(argv)
    rows, skipped = convert(read_rows(a.input), a.format)
    with open(a.out, "w") as f:
        json.dump(rows, f)
    print(f"{len(rows)} rows -> {a.out}; skipped {len(skipped)}")
    for sid, why in list(skipped.items())[:20]:
        print(f"  skipped {sid}: {why}")


if __name__ == "__main__":
    main()
