"""LLaVA-format dataset: rows validated once at construction, bad ones skipped and counted by reason."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mage_fast.data.config import DataConfig
from mage_fast.data.image import ImageTransform, load_image
from mage_fast.data.scan import Result, scan_images
from mage_fast.data.template import ConversationTemplate, to_messages
from mage_fast.data.tokens import IMAGE_TOKEN
from mage_fast.toolcall.format import TOOL_REASONS, RowError, check_turns, is_tool_row, load_tools

log = logging.getLogger(__name__)

MAX_LATE_TRIES = 16  # consecutive samples tried before a decode failure stops the run
REASONS = (
    "malformed",
    "missing_image",
    "corrupt_image",
    "placeholder_mismatch",
    "over_length",
    "no_labels",
    *TOOL_REASONS,
)


class DataError(ValueError):
    """The data cannot be trained on: too many bad samples, or an image failing at load time."""


@dataclass
class DataStats:
    """Validation outcome: ``counts``/``ids`` of skipped samples per reason, one example detail each."""

    source: str
    total: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    ids: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in REASONS})
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    @property
    def kept(self) -> int:
        return self.total - self.skipped

    @property
    def bad_fraction(self) -> float:
        return self.skipped / self.total if self.total else 0.0

    def add(self, reason: str, sid: str, detail: str) -> None:
        self.counts[reason] += 1
        self.ids[reason].append(sid)
        self.examples.setdefault(reason, f"{sid}: {detail}")

    def summary(self) -> str:
        """One line: ``train.json: kept 990/1000, skipped 10 (1.0%): missing_image=7 corrupt_image=3``."""
        reasons = " ".join(f"{r}={n}" for r, n in self.counts.items() if n) or "none"
        return (
            f"{self.source}: kept {self.kept}/{self.total}, skipped {self.skipped} "
            f"({100 * self.bad_fraction:.1f}%): {reasons}"
        )


class BadLine:
    """Stands in for a JSONL line that is not valid JSON (`read_rows` returns one in its place), so
    a reader counts it as malformed: `.id` is "line N", `.error` the JSON error."""

    def __init__(self, lineno: int, error: str):
        self.id, self.error = f"line {lineno}", error


def read_rows(path: str | os.PathLike) -> list[Any]:
    """A JSON list file or a JSONL file (sniffed from the first character, not the extension)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from e
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                rows.append(BadLine(n, str(e)))
    return rows


def _str_list(value: Any, what: str) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    raise ValueError(f"{what} must be a string or a list")


def _parse_media(row: Mapping[str, Any]) -> tuple[list[str], list[str | None]]:
    """Image paths and one caption (or None) per image; ValueError when malformed."""
    images = _str_list(row.get("image", []), "image")
    if not all(isinstance(p, str) and p for p in images):
        raise ValueError("image entries must be non-empty strings")
    cap = row.get("caption")
    if cap is None or isinstance(cap, str):  # one caption for all images of the row
        captions = [cap or None] * len(images)
    elif isinstance(cap, list) and len(cap) == len(images) and all(isinstance(c, str | None) for c in cap):
        captions = [c or None for c in cap]
    else:
        raise ValueError(f"caption must be a string or a list of {len(images)} strings/nulls")
    return images, captions


def _check_tools(row: Mapping[str, Any]) -> list[dict] | None:
    """The tool checks of ``python -m mage_fast.apps.tools.validate`` (RowError) for a tool row; its tools."""
    if not is_tool_row(row):
        return None
    tools = load_tools(row.get("tools"))
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns or not all(isinstance(x, Mapping) for x in turns):
        raise RowError("malformed", "conversations must be a non-empty list of objects")
    check_turns(turns, tools)
    return tools or None


class LlavaDataset(Dataset):
    """LLaVA rows → samples. Every row is validated once here (identical on every rank), bad ones
    are skipped by reason (see :data:`REASONS` and :attr:`stats`), and a :class:`DataError` is
    raised when the skipped fraction exceeds ``max_bad_fraction``.

    ``__getitem__`` returns ``{"id": str, "input_ids": (L,) long, "labels": (L,) long,
    "pixel_values": (n_img, 3, S, S) float32, "caption_ids": [ (Lc_i,) long per image ]}``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer: Any,
        *,
        image_root: str | os.PathLike,
        transform: ImageTransform,
        num_image_tokens: int,
        max_length: int,
        max_bad_fraction: float,
        template: ConversationTemplate | None = None,
        cache_tokens: bool = True,
        image_check: Callable[[list[str]], dict[str, Result]] | None = None,
        late_log: str | None = None,
    ):
        self.path, self.tokenizer, self.transform = str(path), tokenizer, transform
        self.image_check = image_check or scan_images
        self.late_log = late_log  # a JSONL file: one line per image that failed to decode in the loader
        self.late: list[dict] = []  # those failures, in this process
        self.image_root, self.max_length = str(image_root), int(max_length)
        self.template = template or ConversationTemplate(tokenizer, num_image_tokens=num_image_tokens)
        if self.template.num_image_tokens != num_image_tokens:
            raise ValueError(
                f"template expands {self.template.num_image_tokens} tokens per image, "
                f"num_image_tokens={num_image_tokens}"
            )
        self.stats = DataStats(os.path.basename(self.path))
        self.ids: list[str] = []
        self.images: list[list[str]] = []  # resolved paths
        self.captions: list[list[str | None]] = []
        self.lengths: list[int] = []  # after image expansion, e.g. for length-grouped sampling
        self._convs: list[Any] | None = None if cache_tokens else []
        self._validate(read_rows(self.path), cache_tokens)
        self._check_threshold(float(max_bad_fraction))

    # ---- validation --------------------------------------------------------------------------
    def _validate(self, rows: list[Any], cache_tokens: bool) -> None:
        """Every row through the cheap checks, then the image check (once per distinct image,
        split over ranks, cached), then tokenization in blocks of 1024 (one tokenizer call each)."""
        self.stats.total = len(rows)
        parsed = [p for i, row in enumerate(rows) if (p := self._parse_row(i, row)) is not None]
        image_ok = self.image_check([os.path.join(self.image_root, x) for p in parsed for x in p[2]])
        tokens: dict[str, list] | None = {"ids": [], "mask": [], "offsets": [0]} if cache_tokens else None
        for b in range(0, len(parsed), 1024):
            block = parsed[b : b + 1024]
            for row, (ids, mask) in zip(block, self.template.tokenize([p[4] for p in block])):
                self._keep(row, ids, mask, image_ok, tokens)
        if tokens is not None:  # one flat buffer: no per-sample objects for forked workers to copy
            self._tok_ids = np.concatenate(tokens["ids"]) if tokens["ids"] else np.zeros(0, np.int32)
            self._tok_mask = np.concatenate(tokens["mask"]) if tokens["mask"] else np.zeros(0, bool)
            self._offsets = np.asarray(tokens["offsets"], dtype=np.int64)

    def _parse_row(self, i: int, row: Any) -> tuple | None:
        """The cheap checks of row i -> (id, (conversations, tools), images, captions, rendered),
        or None with the reason counted."""
        st = self.stats
        if isinstance(row, BadLine):
            st.add("malformed", row.id, row.error)
            return None
        sid = str(row["id"]) if isinstance(row, dict) and row.get("id") is not None else f"row {i}"
        try:
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            tools = _check_tools(row)
            messages = to_messages(row.get("conversations"))
            images, captions = _parse_media(row)
        except RowError as e:  # tool rows: the validator's reasons
            st.add(e.reason, sid, e.detail)
            return None
        except ValueError as e:
            st.add("malformed", sid, str(e))
            return None
        # images come in human turns and, for tool results, in observation turns
        n_user = sum(m["content"].count(IMAGE_TOKEN) for m in messages if m["role"] in ("user", "tool"))
        n_all = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if n_user != len(images) or n_all != n_user:
            detail = f"{n_all} {IMAGE_TOKEN} ({n_user} in human/observation turns) for {len(images)} images"
            st.add("placeholder_mismatch", sid, detail)
            return None
        try:
            rendered = self.template.render(messages, tools=tools)
        except Exception as e:  # e.g. a chat template raising on the turn order
            st.add("malformed", sid, f"template: {type(e).__name__}: {e}")
            return None
        return sid, (row["conversations"], tools), images, captions, rendered

    def _keep(self, row: tuple, ids: np.ndarray, mask: np.ndarray, image_ok: dict, tokens: dict | None) -> None:
        """The checks after tokenization; a row that passes them joins the dataset."""
        st, (sid, messages, images, captions, _) = self.stats, row
        if int((ids == self.template.image_token_id).sum()) != len(images):
            st.add("placeholder_mismatch", sid, "image tokens after rendering != images")
            return None
        length = self.template.expanded_length(ids)
        if length > self.max_length:
            st.add("over_length", sid, f"{length} tokens > max_length {self.max_length}")
            return None
        if not mask.any():
            st.add("no_labels", sid, "no assistant token")
            return None
        paths = [os.path.join(self.image_root, p) for p in images]
        bad = next(filter(None, (image_ok[p] for p in paths)), None)
        if bad:
            st.add(bad[0], sid, bad[1])
            return None
        self.ids.append(sid)
        self.images.append(paths)
        self.captions.append(captions)
        self.lengths.append(length)
        if tokens is None:
            self._convs.append(messages)
            return None
        tokens["ids"].append(ids.astype(np.int32))
        tokens["mask"].append(mask)
        tokens["offsets"].append(tokens["offsets"][-1] + len(ids))
        return None

    def _check_threshold(self, max_bad_fraction: float) -> None:
        st = self.stats
        log.info("%s", st.summary())
        for r in REASONS:
            if st.counts[r]:
                log.warning("%s: skipped %d (%s), ids: %s", st.source, st.counts[r], r, st.ids[r][:20])
        if st.kept == 0 or st.bad_fraction > max_bad_fraction:
            if st.skipped == 0:
                raise DataError(f"{self.path}: no samples")
            top = max(REASONS, key=lambda r: st.counts[r])
            raise DataError(
                f"{self.path}: {st.skipped}/{st.total} samples are bad ({100 * st.bad_fraction:.1f}% > "
                f"max_bad_fraction {100 * max_bad_fraction:.1f}%); most are {top}: {st.counts[top]}, "
                f"e.g. ids {st.ids[top][:5]} ({st.examples[top]}). {st.summary()}"
            )

    # ---- access --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Sample `i`; when one of its images fails to decode (it passed the structure check), the
        next sample whose images decode stands in for it, and a line naming both is appended to
        `late_log` (never a silent substitute). The same failure gives the same replacement."""
        failed: list[tuple[int, str]] = []
        for k in range(min(MAX_LATE_TRIES, len(self.ids))):
            j = (i + k) % len(self.ids)
            pixels, error = self._decode(j)
            if error:
                failed.append((j, error))
                continue
            for bad, detail in failed:
                self._record_late(bad, detail, self.ids[j])
            return self._sample(j, pixels)
        raise DataError(
            f"sample {self.ids[i]!r} and the {len(failed) - 1} after it have an image that fails to decode "
            f"(first: {failed[0][1]}): check the image folder"
        )

    def _decode(self, j: int) -> tuple[list[torch.Tensor], str | None]:
        """Sample j's images, each decoded once, or (partial, "<path>: <error>") at the first failure."""
        pixels = []
        for p in self.images[j]:
            try:
                pixels.append(self.transform(load_image(p)))
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... on a bad file
                return pixels, f"{p}: {type(e).__name__}: {e}"
        return pixels, None

    def _record_late(self, j: int, detail: str, replacement: str) -> None:
        """Count the failure (this process) and append it to `late_log` (one JSON line, one write)."""
        rec = {"id": self.ids[j], "reason": "corrupt_image", "detail": detail, "replaced_by": replacement}
        self.late.append(rec)
        log.warning("sample %r: an image fails to decode (%s); sample %r stands in", rec["id"], detail, replacement)
        if self.late_log:
            fd = os.open(self.late_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (json.dumps(rec) + "\n").encode())
            finally:
                os.close(fd)

    def _sample(self, i: int, pixels: list[torch.Tensor]) -> dict[str, Any]:
        if self._convs is None:
            a, b = self._offsets[i], self._offsets[i + 1]
            ids, mask = self._tok_ids[a:b].astype(np.int64), self._tok_mask[a:b]
        else:
            ids, mask = self.template.encode_compact(*self._convs[i])
        input_ids, labels = self.template.expand(ids, mask)
        s = self.transform.size
        pixel_values = torch.stack(pixels) if pixels else torch.zeros(0, 3, s, s)
        caption_ids = [torch.tensor(self._tokens(c), dtype=torch.long) for c in self.captions[i]]
        return {
            "id": self.ids[i],
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": pixel_values,
            "caption_ids": caption_ids,
        }

    def _tokens(self, text: str | None) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    @classmethod
    def from_config(
        cls,
        cfg: DataConfig,
        tokenizer: Any,
        *,
        transform: ImageTransform,
        num_image_tokens: int,
        split: str = "train",
        template: ConversationTemplate | None = None,
        image_check: Callable[[list[str]], dict[str, Result]] | None = None,
        late_log: str | None = None,
    ) -> LlavaDataset:
        """Dataset for ``split`` ("train" | "eval"), paths resolved against ``cfg.root``."""
        rel = {"train": cfg.train, "eval": cfg.eval}.get(split, "")
        if not rel:
            raise ValueError(f"no data file for split {split!r} in {cfg}")
        return cls(
            os.path.join(cfg.root, rel),
            tokenizer,
            image_root=os.path.join(cfg.root, cfg.image_folder),
            transform=transform,
            num_image_tokens=num_image_tokens,
            max_length=cfg.max_length,
            max_bad_fraction=cfg.max_bad_fraction,
            template=template,
            image_check=image_check,
            late_log=late_log,
        )


def read_late_logs(paths: list[str]) -> dict[str, dict[str, list[str]]]:
    """Decode failures found in the loader (the `late_log` files of all ranks), by reason:
    {"corrupt_image": {"ids": [...], "replaced_by": [...]}}, in file order."""
    out: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            for rec in map(json.loads, filter(str.strip, f)):
                entry = out.setdefault(rec["reason"], {"ids": [], "replaced_by": []})
                entry["ids"].append(rec["id"])
                entry["replaced_by"].append(rec["replaced_by"])
    return out
