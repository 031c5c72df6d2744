"""Helpers for tests/data: tiny word-level tokenizers (built locally, no hub) and file writers."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
CHAT_SPECIALS = ["<|im_start|>", "<|im_end|>"]
WORDS = (
    "USER ASSISTANT : . ? , what is this that a an the red blue green circle square triangle "
    "and yes no there are two one left right of shape color you helpful assistant user system"
).split()
# ChatML-like template, as Qwen2 writes it (without its default system prompt)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(chat: bool = False, image_token: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    """WordLevel + Whitespace tokenizer like the built-in task's; ``chat`` adds a Jinja chat_template."""
    specials = [t for t in SPECIALS if (image_token or t != "<image>") and (pad or t != "<pad>")]
    vocab = {w: i for i, w in enumerate(specials + CHAT_SPECIALS + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = (["<image>"] if image_token else []) + (CHAT_SPECIALS if chat else [])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>" if pad else None,
        additional_special_tokens=extra,
    )
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def write_png(path: str, size: int = 16, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def write_truncated(path: str, fmt: str) -> str:
    """A real PNG/JPEG of noise (so most bytes are pixel data) cut in half: PIL opens it, decode fails."""
    rgb = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def write_rows(path: str, rows: list, jsonl: bool | None = None) -> str:
    if jsonl if jsonl is not None else path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        with open(path, "w") as f:
            json.dump(rows, f)
    return path


def qa(
    rid: str, image: str | list | None = None, q: str = "<image>\nwhat is this", a: str = "a red circle", **extra
) -> dict:
    """A one-turn LLaVA row."""
    row = {"id": rid, "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}], **extra}
    if image is not None:
        row["image"] = image
    return row
