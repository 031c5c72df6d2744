"""LLaVA-format data pipeline: config, image transform, special tokens, templates, dataset, collator."""

from mage_fast.data.collator import Collator
from mage_fast.data.config import DataConfig
from mage_fast.data.image import CLIP_MEAN, CLIP_STD, ImageTransform, load_image
from mage_fast.data.llava import REASONS, DataError, DataStats, LlavaDataset, read_rows
from mage_fast.data.template import (
    IGNORE_INDEX,
    ConversationTemplate,
    encode_conversation,
    encode_generation_prompt,
    to_messages,
)
from mage_fast.data.tokens import IMAGE_TOKEN, ensure_special_tokens, image_token_id

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IGNORE_INDEX",
    "IMAGE_TOKEN",
    "REASONS",
    "Collator",
    "ConversationTemplate",
    "DataConfig",
    "DataError",
    "DataStats",
    "ImageTransform",
    "LlavaDataset",
    "encode_conversation",
    "encode_generation_prompt",
    "ensure_special_tokens",
    "image_token_id",
    "load_image",
    "read_rows",
    "to_messages",
]
