"""Tiny benchmark fixtures in the published formats (MME folder, MMBench TSV, SEED-Bench JSON)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os

from PIL import Image

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (120, 30, 160)]


def png(path: str | None, k: int, size: tuple[int, int] = (30, 20)) -> bytes:
    """A small solid-colour PNG (written to `path` when given); returns its bytes."""
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[k % len(COLOURS)]).save(buf, format="PNG")
    if path:
        with open(path, "wb") as f:
            f.write(buf.getvalue())
    return buf.getvalue()


# subtask -> per image the (question, answer) lines; artwork uses the images/ + questions_answers_YN/
# layout, the others images and .txt side by side. Two spaces before "Please answer yes or no." as
# in a few of MME's own lines.
MME_SUBTASKS = {
    "existence": [[("Is there a cat? Please answer yes or no.", "Yes"), ("Is there a dog? Please answer yes or no.", "No")],
                  [("Is there a red block? Please answer yes or no.", "Yes"), ("Is there a red scarf in the image?  Please answer yes or no.", "No")]],
    "artwork": [[("Is this by Monet? Please answer yes or no.", "Yes"), ("Is this by Dali? Please answer yes or no.", "No")]],
    "color": [[("Is it red? Please answer yes or no.", "Yes"), ("Is it blue? Please answer yes or no.", "No")]],
    "commonsense_reasoning": [[("Is it safe? Please answer yes or no.", "No"), ("Is it dangerous? Please answer yes or no.", "Yes")]],
}  # fmt: skip


def write_mme(root: str) -> str:
    k = 0
    for sub, images in MME_SUBTASKS.items():
        split = sub == "artwork"
        img_dir = os.path.join(root, sub, "images") if split else os.path.join(root, sub)
        txt_dir = os.path.join(root, sub, "questions_answers_YN") if split else img_dir
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(txt_dir, exist_ok=True)
        for i, lines in enumerate(images):
            png(os.path.join(img_dir, f"{i:04d}.png"), k)
            k += 1
            with open(os.path.join(txt_dir, f"{i:04d}.txt"), "w") as f:
                f.write("".join(f"{q}\t{a}\n" for q, a in lines))
    return root


MMB_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category"]


def mmbench_rows() -> list[dict]:
    return [
        {"index": 0, "question": "What colour is the image?", "hint": "nan", "A": "red", "B": "green",
         "C": "blue", "D": "yellow", "answer": "A", "category": "attribute", "image": base64.b64encode(png(None, 0)).decode()},
        {"index": 1, "question": "Which animal is drawn?", "hint": "Look closely.", "A": "cat", "B": "dog",
         "C": "bird", "D": "nan", "answer": "B", "category": "instance", "image": base64.b64encode(png(None, 1)).decode()},
    ]  # fmt: skip


def write_tsv(path: str, rows: list[dict]) -> str:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=MMB_COLUMNS, delimiter="\t", restval="")
        w.writeheader()
        w.writerows(rows)
    return path


# SEED-Bench's own mapping as the release file has it (ids 3 and 4 are the ones copies swap).
SEED_TYPES = {"Scene Understanding": 1, "Instance Identity": 2, "Instance Location": 3, "Instance Attributes": 4,
              "Text Understanding": 9, "Action Recognition": 10}  # fmt: skip


def write_seed(root: str) -> str:
    os.makedirs(os.path.join(root, "SEED-Bench-image"), exist_ok=True)
    qs = []
    for i, (dim, answer, dtype) in enumerate([(3, "A", "image"), (3, "B", "image"), (4, "C", "image"),
                                              (9, "D", "image"), (10, "A", "video")]):  # fmt: skip
        data_id = f"{i:05d}_{i}.png" if dtype == "image" else f"v{i}.mp4"
        if dtype == "image":
            png(os.path.join(root, "SEED-Bench-image", data_id), i)
        qs.append({"question_id": str(100 + i), "question": f"Question {i}?", "choice_a": "red", "choice_b": "green",
                   "choice_c": "blue", "choice_d": "yellow", "answer": answer, "data_id": data_id,
                   "data_type": dtype, "question_type_id": dim})  # fmt: skip
    path = os.path.join(root, "SEED-Bench.json")
    with open(path, "w") as f:
        json.dump({"question_type": SEED_TYPES, "questions": qs}, f)
    return path
