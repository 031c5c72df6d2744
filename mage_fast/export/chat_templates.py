"""Jinja chat templates that render mage-fast's conversation templates byte for byte, for an
exported folder's processor. A message's content is a string (``<image>`` placeholders inline, as
mage-fast writes them) or transformers' list of parts: ``{"type": "image"}`` as ``<image>``,
``{"type": "text", "text": ...}`` as its text, parts joined by newlines (so an image then a
question renders as ``mage_fast.apps.chat`` asks it: ``"<image>\\nquestion"``)."""

from __future__ import annotations

from typing import Any

from mage_fast.data.llava_conv import VICUNA_SYSTEM

_TEXT = (
    "{%- macro text(c) -%}{%- if c is string -%}{{ c }}{%- else -%}{%- for p in c -%}"
    "{%- if not loop.first -%}{{ '\\n' }}{%- endif -%}"
    "{%- if p['type'] == 'image' -%}{{ '<image>' }}{%- else -%}{{ p['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}{%- endmacro -%}"
)

# ConversationTemplate's built-in rendering (a tokenizer without a chat template).
DEFAULT = _TEXT + (
    "{{ (bos_token or '') }}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ text(m['content']) + '\\n' }}"
    "{%- elif m['role'] == 'user' -%}{{ 'USER: ' + text(m['content']) + '\\n' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + text(m['content']) + (eos_token or '') + '\\n' }}"
    "{%- else -%}{{ raise_exception('this template renders system, user and assistant turns only') }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# LLaVA's vicuna_v1 (mage_fast.data.llava_conv): a leading system turn replaces the system
# sentence, a leading assistant turn is dropped, a turn with one <image> gets it moved first.
VICUNA_V1 = _TEXT + (
    "{%- set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "', start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = text(messages[0]['content']) -%}{%- set ns.start = 1 -%}{%- endif -%}"
    "{%- if messages|length > ns.start and messages[ns.start]['role'] == 'assistant' -%}"
    "{%- set ns.start = ns.start + 1 -%}{%- endif -%}"
    "{{ (bos_token or '') + ns.system + ' ' }}"
    "{%- for m in messages[ns.start:] -%}"
    "{%- if m['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
    "{{ raise_exception('LLaVA templates need alternating user/assistant turns') }}{%- endif -%}"
    "{%- set c = text(m['content']) -%}"
    "{%- if c.count('<image>') == 1 -%}{%- set c = ('<image>\\n' + c.replace('<image>', '').strip()).strip() -%}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' + c + ' ' }}{%- else -%}{{ 'ASSISTANT: ' + c + '</s>' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token in front of a text by itself."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("x")["input_ids"]
    return bos is not None and bool(ids) and ids[0] == bos


def chat_template(name: str, tokenizer: Any, bos: bool = True) -> str:
    """The Jinja template for mage-fast's template ``name`` with this tokenizer: the tokenizer's
    own chat template when "default" finds one (mage-fast renders with it then), else ours.
    ``bos=False`` leaves the BOS token out (for a processor whose tokenizer adds it)."""
    if name == "default" and tokenizer.chat_template:
        return tokenizer.chat_template
    if name in ("default", "vicuna_v1"):
        text = DEFAULT if name == "default" else VICUNA_V1
        return text if bos else text.replace("(bos_token or '')", "''")
    raise ValueError(
        f"template {name!r} has no exported chat template yet (default and vicuna_v1 have); "
        f"the mage-fast folder keeps working with mage_fast.apps.chat"
    )
