"""Special tokens the pipeline needs on any HF tokenizer."""

from __future__ import annotations

import inspect
from typing import Any

IMAGE_TOKEN = "<image>"


def image_token_id(tokenizer: Any) -> int:
    """Id of ``<image>``; raises if the tokenizer lacks it (call :func:`ensure_special_tokens`)."""
    tid = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if tid is None or IMAGE_TOKEN not in tokenizer.all_special_tokens:
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} special token; call ensure_special_tokens() first")
    return int(tid)


def ensure_special_tokens(tokenizer: Any) -> int:
    """Make sure ``tokenizer`` has an ``<image>`` special token and a pad token; returns the image id.

    ``<image>`` is added as an additional special token when absent (the vocab may grow: the model
    must resize its embeddings to ``len(tokenizer)``). A missing pad token becomes eos, else unk,
    else a new ``<pad>``; padding is always masked by the collator, so reusing eos is harmless.
    """
    if IMAGE_TOKEN not in tokenizer.all_special_tokens:
        # keep existing additional specials: the kwarg's name changed between transformers 4 and 5
        params = inspect.signature(tokenizer.add_special_tokens).parameters
        names = ("replace_extra_special_tokens", "replace_additional_special_tokens")
        kw = {k: False for k in names if k in params}
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, **kw)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return image_token_id(tokenizer)
