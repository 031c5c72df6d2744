"""Answering benchmark questions with a model: batched greedy generation or option likelihoods,
appended to a resumable LLaVA-style answers JSONL (a rerun skips the ids already answered).

Prompts are encoded with the model's conversation template (the one it was trained with), so a
LLaVA-1.5 checkpoint sees LLaVA's ``vicuna_v1`` prompt. Greedy decoding runs on prompts of one
length per batch (``MageModel.generate`` takes no padding, so the batch size changes no answer);
likelihood scoring pads on the right under an attention mask. Images are resized to the model's
square size (``aspect="resize"``, as the project trains), or first padded to a square with the
mean colour (``aspect="pad"``, LLaVA-1.5's ``image_aspect_ratio: pad``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm import tqdm

from mage_fast.apps.mllm_bench.common import LETTERS, Question, answer_row, read_answers, row_key
from mage_fast.data.image import ImageTransform, load_image
from mage_fast.data.llava_conv import make_template
from mage_fast.data.template import IGNORE_INDEX, ConversationTemplate
from mage_fast.export.hf_llava import import_llava, is_llava_dir
from mage_fast.export.pretrained import image_transform, load_pretrained
from mage_fast.labels import next_token_targets


@dataclass
class Bench:
    """A loaded model and what its prompts need."""

    model: torch.nn.Module
    tokenizer: object
    template: ConversationTemplate
    transform: ImageTransform
    model_id: str
    aspect: str = "resize"


ASPECT_RULES = {
    "resize": "bicubic resize to SxS, aspect ratio not kept (no crop, no padding)",
    "pad": "padded to a square with the image mean colour, centred (LLaVA's expand2square), then bicubic resize to SxS",
}


def pad_to_square(img: Image.Image, mean: tuple[float, float, float]) -> Image.Image:
    """LLaVA-1.5's ``expand2square``: the RGB image centred on a square of the mean colour."""
    img = img.convert("RGB")
    w, h = img.size
    if w == h:
        return img
    out = Image.new("RGB", (max(w, h),) * 2, tuple(int(m * 255) for m in mean))
    out.paste(img, ((max(w, h) - w) // 2, (max(w, h) - h) // 2))
    return out


def open_image(src: str | bytes) -> Image.Image:
    """A question's image: a file path, or encoded bytes (MMBench's base64-decoded TSV cell)."""
    if isinstance(src, bytes):
        img = Image.open(io.BytesIO(src))
        img.load()
        return img
    return load_image(src)


def pixels(bench: Bench, questions: list[Question]) -> torch.Tensor:
    """(n, 3, S, S) pixel values, one image per question, by the bench's aspect rule."""
    if bench.aspect not in ASPECT_RULES:
        raise ValueError(f"unknown aspect rule {bench.aspect!r}: one of {sorted(ASPECT_RULES)}")
    images = [open_image(q.image) for q in questions]
    if bench.aspect == "pad":
        images = [pad_to_square(im, bench.transform.mean) for im in images]
    return torch.stack([bench.transform(im) for im in images])


def _resume(path: str, key: Callable[[dict], str]) -> set[str]:
    """Keys of the answers already in the file; a torn last line (a killed run) is cut off first."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
    return set(read_answers(path, key))


def _batches(bench: Bench, todo: list[Question], batch_size: int) -> Iterator[tuple[list[Question], torch.Tensor]]:
    """Batches of equal prompt length, in order of first appearance: (questions, input_ids (B, L))."""
    groups: dict[int, list[tuple[Question, torch.Tensor]]] = {}
    for q in todo:
        ids = bench.template.encode_prompt([{"from": "human", "value": q.prompt}])
        groups.setdefault(len(ids), []).append((q, ids))
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            part = group[i : i + batch_size]
            yield [q for q, _ in part], torch.stack([ids for _, ids in part])


def run(
    bench: Bench,
    questions: list[Question],
    out: str,
    answer_fn: Callable,
    batch_size: int = 16,
    key: Callable[[dict], str] = row_key,
) -> int:
    """Answers every question not yet in ``out`` (``key`` of its rows, see
    :func:`~mage_fast.apps.mllm_bench.common.read_answers`); ``answer_fn(bench, questions, input_ids) -> texts``.
    Returns how many it answered."""
    done = _resume(out, key)
    todo = [q for q in questions if q.qid not in done]
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc=os.path.basename(out), unit="q") as bar:
        for qs, ids in _batches(bench, todo, batch_size):
            for q, text in zip(qs, answer_fn(bench, qs, ids)):
                f.write(answer_row(q, text, bench.model_id) + "\n")
            f.flush()
            bar.update(len(qs))
    return len(todo)


def max_new_tokens(n: int) -> Callable:
    """An ``answer_fn``: greedy decoding of at most ``n`` tokens."""

    @torch.no_grad()
    def generate(bench: Bench, qs: list[Question], ids: torch.Tensor) -> list[str]:
        tok = bench.tokenizer
        gen = bench.model.generate(ids, pixels(bench, qs), torch.ones(len(qs), dtype=torch.long), n, tok.eos_token_id)
        return [tok.decode(g, skip_special_tokens=True).strip() for g in gen]

    return generate


def _option_batch(bench: Bench, qs: list[Question]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (question, option) pair as a conversation whose answer is the option text, padded on
    the right: input_ids, labels, attention_mask (B·4, L)."""
    enc = [
        bench.template.encode(
            [{"from": "human", "value": f"<image>\n{q.meta['question']}"}, {"from": "gpt", "value": c}]
        )
        for q in qs
        for c in q.choices
    ]
    length = max(len(i) for i, _ in enc)
    pad = bench.tokenizer.pad_token_id
    ids = torch.full((len(enc), length), pad, dtype=torch.long)
    labels = torch.full((len(enc), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(enc), length, dtype=torch.long)
    for r, (i, lab) in enumerate(enc):
        ids[r, : len(i)], labels[r, : len(i)], mask[r, : len(i)] = i, lab, 1
    return ids, labels, mask


@torch.no_grad()
def choice_scores(bench: Bench, qs: list[Question]) -> torch.Tensor:
    """Mean log-probability of each option's answer tokens (its text and end-of-turn token) given
    the image and the question: (len(qs), n_choices)."""
    ids, labels, mask = _option_batch(bench, qs)
    n = len(qs[0].choices)
    pix = pixels(bench, qs).repeat_interleave(n, 0)
    embeds, _ = bench.model.embed(ids, pix, torch.ones(len(ids), dtype=torch.long))
    logits = bench.model.llm(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
    y, sel = next_token_targets(labels)
    logp = torch.log_softmax(logits, -1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    mean = (logp * sel).sum(1) / sel.sum(1).clamp(min=1)
    return mean.view(len(qs), n)


def rank_choices(bench: Bench, qs: list[Question], ids: torch.Tensor) -> list[str]:
    """An ``answer_fn``: the letter of the most likely option (SEED-Bench's likelihood mode)."""
    return [LETTERS[int(i)] for i in choice_scores(bench, qs).argmax(1)]


def load(model_dir: str, cache: str = os.path.join("runs", "bench", "llava_import"), aspect: str = "resize") -> Bench:
    """A :class:`Bench` (fp32, CPU) from an exported model folder, or from a transformers LLaVA
    folder imported once into ``cache/<its name>``."""
    name = os.path.basename(os.path.normpath(model_dir))
    if is_llava_dir(model_dir):
        src, model_dir = model_dir, os.path.join(cache, name)
        if not os.path.isdir(model_dir):
            import_llava(src, model_dir)
    model, tok = load_pretrained(model_dir)
    template = make_template(tok, model.num_image_tokens, model.cfg.template)
    return Bench(model, tok, template, image_transform(model_dir, model.image_size), name, aspect)
