"""The tool loop: generate, parse, validate, execute, feed the result back, until an answer.

Each step the model answers the conversation so far (greedy). Text with ``<tool_call>`` blocks is
parsed (:func:`~mage_fast.toolcall.convert.parse_markup`, strings stripped: word-level tokenizers
decode with spaces between tokens) and every call runs through the :class:`Registry` (schema check
first; failures are error observations). The calls and observations join the conversation, an
image result as an ``<image>`` placeholder plus the image itself, and the model answers again.
Text without a call is the final answer; ``max_steps`` model turns end the episode otherwise. A
call block that does not parse ends the episode too (``invalid`` set), as there is nothing to run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from mage_fast.apps.tools.registry import Observation, Registry, make_registry
from mage_fast.data.image import ImageTransform
from mage_fast.data.template import ConversationTemplate
from mage_fast.export.pretrained import image_transform, load_pretrained
from mage_fast.toolcall.convert import parse_markup
from mage_fast.toolcall.format import CALL_ROLE, OBS_ROLE, Call, RowError, calls_value, check_calls


@dataclass
class Step:
    """One model turn: its text, the calls parsed from it, whether they all validated, results."""

    text: str
    calls: list[Call] = field(default_factory=list)
    valid: bool = True
    observations: list[Observation] = field(default_factory=list)


@dataclass
class Episode:
    """A conversation being run: sharegpt ``turns``, every image so far, the steps, the answer."""

    turns: list[dict[str, Any]]
    images: list[Image.Image]
    steps: list[Step] = field(default_factory=list)
    final: str | None = None
    invalid: str | None = None  # why the last step's call block did not parse
    produced: list[Image.Image] = field(default_factory=list)  # images the tools returned

    @property
    def done(self) -> bool:
        return self.final is not None or self.invalid is not None


class Agent:
    """A model + tokenizer + registry; :meth:`run` plays episodes to the end (batched by length)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        registry: Registry,
        transform: ImageTransform,
        max_steps: int = 4,
        max_new_tokens: int = 96,
    ):
        self.model, self.tok, self.registry, self.transform = model, tokenizer, registry, transform
        self.template = ConversationTemplate(tokenizer, num_image_tokens=model.num_image_tokens)
        self.max_steps, self.max_new_tokens = int(max_steps), int(max_new_tokens)

    @torch.no_grad()
    def _generate(self, episodes: list[Episode]) -> list[str]:
        """One greedy answer per episode, prompts of equal length batched together."""
        tools = self.registry.schemas()
        prompts = [self.template.encode_prompt(e.turns, tools) for e in episodes]
        buckets: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(prompts):
            buckets[len(p)].append(i)
        s = self.model.image_size
        texts = [""] * len(episodes)
        for idx in buckets.values():
            pix = [self.transform(im) for i in idx for im in episodes[i].images]
            gen = self.model.generate(
                torch.stack([prompts[i] for i in idx]),
                torch.stack(pix) if pix else torch.zeros(0, 3, s, s),
                torch.tensor([len(episodes[i].images) for i in idx]),
                self.max_new_tokens,
                self.tok.eos_token_id,
            )
            for i, g in zip(idx, gen):
                texts[i] = self.tok.decode(g, skip_special_tokens=True).strip()
        return texts

    def _advance(self, e: Episode, text: str) -> None:
        """Apply one model turn to its episode: the answer, or the calls and their results."""
        try:
            rest, calls = parse_markup(text, strip=True)
        except RowError as err:
            e.steps.append(Step(text, valid=False))
            e.invalid = err.detail
            return
        if not calls:
            e.steps.append(Step(text))
            e.final = rest
            e.turns.append({"from": "gpt", "value": rest})
            return
        try:
            check_calls(calls, self.registry.schemas())
            valid = True
        except RowError:
            valid = False
        step = Step(text, calls, valid)
        e.steps.append(step)
        e.turns.append({"from": CALL_ROLE, "value": calls_value(calls)})
        for c in calls:
            obs = self.registry.execute(c, e.images)
            step.observations.append(obs)
            e.turns.append({"from": OBS_ROLE, "value": obs.text})
            e.images += obs.images
            e.produced += obs.images

    def run(self, episodes: list[Episode]) -> list[Episode]:
        """Play every episode to its answer or ``max_steps`` model turns."""
        for _ in range(self.max_steps):
            live = [e for e in episodes if not e.done]
            if not live:
                break
            for e, text in zip(live, self._generate(live)):
                self._advance(e, text)
        return episodes


def load_agent(model_dir: str, modules: list[str] = (), timeout_s: float = 30.0, **kw: Any) -> Agent:
    """An Agent over an exported model, the built-in tools and those of ``modules``."""
    model, tok = load_pretrained(model_dir)
    model.eval()
    return Agent(
        model, tok, make_registry(modules, timeout_s=timeout_s), image_transform(model_dir, model.image_size), **kw
    )
