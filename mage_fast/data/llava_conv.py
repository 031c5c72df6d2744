"""LLaVA's conversation templates, rendered byte for byte as LLaVA's ``conversation.py`` and
``train.py`` render them, with LLaVA's label masking (loss on each answer and its end token).

    vicuna_v1      "<system> USER: <image>\\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>"
                   LLaVA-1.5's fine-tuning and evaluation prompt; labels: a_i + "</s>"
    llava_llama_2  "[INST] <<SYS>>\\n<system>\\n<</SYS>>\\n\\n<image>\\nq1 [/INST] a1 </s><s>[INST] q2 [/INST] a2 </s>"
                   labels: a_i + " </s>"
    plain          "<image>" + caption + "\\n" (stage-1 pre-training: the question is dropped, one
                   exchange only); labels: caption + "\\n"

The tokenizer's BOS token is put in front of the string, as LLaVA's ``tokenizer_image_token``
does with ``add_special_tokens``. As in LLaVA's ``preprocess_multimodal``, a turn holding one
``<image>`` gets it moved to its front (``"<image>\\n" + the rest, stripped``); a turn holding
several keeps them in place (LLaVA supports one image; moving several would merge them). A leading
``system`` turn replaces the template's system sentence; a leading assistant turn is dropped (LLaVA
skips it); the rest must alternate user, assistant. Generation prompts end where LLaVA's do:
``"ASSISTANT:"``, ``"[/INST]"``, and for plain ``conversation.py``'s ``"<image>\\nq\\n"``.
"""

from __future__ import annotations

from typing import Any

from mage_fast.data.template import ConversationTemplate, Span
from mage_fast.template_names import TEMPLATE_NAMES

LLAVA_TEMPLATES = TEMPLATE_NAMES[1:]
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAMA_2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
IMAGE = "<image>"


def _image_first(text: str) -> str:
    if text.count(IMAGE) != 1:
        return text
    return (IMAGE + "\n" + text.replace(IMAGE, "").strip()).strip()


def _turns(messages: list[dict[str, str]], system: str) -> tuple[str, list[str]]:
    """(system sentence, the alternating user/assistant contents, images moved first)."""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    if messages and messages[0]["role"] == "assistant":
        messages = messages[1:]
    for i, m in enumerate(messages):
        if m["role"] != ("user", "assistant")[i % 2]:
            raise ValueError(f"LLaVA templates need alternating user/assistant turns; turn {i} is {m['role']}")
    if not messages:
        raise ValueError("LLaVA templates need at least one user turn")
    return system, [_image_first(m["content"]) for m in messages]


def _vicuna_v1(msgs: list[str], system: str, gen: bool) -> tuple[str, list[Span]]:
    text, spans = system + " ", []
    for i, m in enumerate(msgs):
        if i % 2 == 0:
            text += f"USER: {m} "
        else:
            text += "ASSISTANT: "
            spans.append((len(text), len(text) + len(m) + 4))
            text += m + "</s>"
    return (text + "ASSISTANT:" if gen else text), spans


def _llama_2(msgs: list[str], system: str, gen: bool) -> tuple[str, list[Span]]:
    text, spans = "", []
    for i, m in enumerate(msgs):
        if i == 0:
            m = (f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else "") + m
        if i % 2 == 0:
            text += f"<s>[INST] {m} [/INST]"
        else:
            spans.append((len(text) + 1, len(text) + len(m) + 6))
            text += f" {m} </s>"
    cut = len(text) - len(text.lstrip("<s>"))  # LLaVA's ret.lstrip(sep): a character-set strip
    return text[cut:], [(a - cut, b - cut) for a, b in spans]


def _plain(msgs: list[str], system: str, gen: bool) -> tuple[str, list[Span]]:
    if gen:
        return msgs[0] + "\n", []
    if len(msgs) != 2 or IMAGE not in msgs[0]:
        raise ValueError("the plain template takes one exchange whose user turn holds <image>")
    return IMAGE + msgs[1] + "\n", [(len(IMAGE), len(IMAGE) + len(msgs[1]) + 1)]


_STYLES = {"vicuna_v1": (_vicuna_v1, VICUNA_SYSTEM), "llava_llama_2": (_llama_2, LLAMA_2_SYSTEM), "plain": (_plain, "")}


def llava_prompt(
    name: str, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """LLaVA's conversation string (no BOS) and the [start, end) character spans that carry a loss."""
    if name not in _STYLES:
        raise ValueError(f"unknown LLaVA template {name!r}; one of {LLAVA_TEMPLATES}")
    if add_generation_prompt and messages and messages[-1]["role"] == "assistant":
        raise ValueError("a generation prompt ends with a user turn")
    fn, system = _STYLES[name]
    system, msgs = _turns(messages, system)
    return fn(msgs, system, add_generation_prompt)


class LlavaTemplate(ConversationTemplate):
    """:class:`ConversationTemplate` with one of LLaVA's renderings (BOS + LLaVA's string)."""

    def __init__(self, tokenizer: Any, *, num_image_tokens: int, name: str):
        super().__init__(tokenizer, num_image_tokens=num_image_tokens, use_chat_template=False)
        if name not in LLAVA_TEMPLATES:
            raise ValueError(f"unknown LLaVA template {name!r}; one of {LLAVA_TEMPLATES}")
        self.name = name

    def render(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = False, tools: list[dict] | None = None
    ) -> tuple[str, list[Span]]:
        if tools:  # LLaVA's conversations have no tool turns: a tool row needs the default template
            raise ValueError(f"LLaVA template {self.name!r} renders no tools; use model.template=default for tool rows")
        text, spans = llava_prompt(self.name, messages, add_generation_prompt)
        bos = self.tokenizer.bos_token or ""
        return bos + text, [(a + len(bos), b + len(bos)) for a, b in spans]


def make_template(tokenizer: Any, num_image_tokens: int, name: str = "default") -> ConversationTemplate:
    """The template called ``name``: "default" (the tokenizer's chat template, else the built-in
    one) or one of :data:`LLAVA_TEMPLATES`."""
    if name == "default":
        return ConversationTemplate(tokenizer, num_image_tokens=num_image_tokens)
    return LlavaTemplate(tokenizer, num_image_tokens=num_image_tokens, name=name)
