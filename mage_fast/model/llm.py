"""The causal LLM: HF AutoModelForCausalLM from a local folder, or a small random Llama/Qwen2."""

from __future__ import annotations

import importlib.util
import os

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from mage_fast.model import packed_attention
from mage_fast.model.config import LLMConfig, hf_sizes


def pick_attn_implementation(requested: str) -> str:
    """auto → flash_attention_2 when flash-attn is importable and CUDA is up, else sdpa_packed
    (HF's sdpa, packed rows attended per sample)."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        return "flash_attention_2"
    return packed_attention.NAME


def build_llm(cfg: LLMConfig, vocab_size: int) -> torch.nn.Module:
    """A causal LM whose embedding table holds at least `vocab_size` rows (the tokenizer's length)."""
    attn = pick_attn_implementation(cfg.attn_implementation)
    if cfg.path is not None:
        if not os.path.isdir(cfg.path):
            raise FileNotFoundError(f"model.llm.path {cfg.path!r} is not a folder (no model hub here)")
        model, info = AutoModelForCausalLM.from_pretrained(cfg.path, attn_implementation=attn, output_loading_info=True)
        missing = [
            k for k in info["missing_keys"] if not k.endswith("lm_head.weight") or not model.config.tie_word_embeddings
        ]
        if missing:  # HF would leave them random and only log a table
            raise ValueError(f"LLM {cfg.path}: weights missing for {sorted(missing)[:8]}")
        if model.get_input_embeddings().weight.shape[0] < vocab_size:
            model.resize_token_embeddings(vocab_size)
        return model
    conf_cls = LlamaConfig if cfg.arch == "llama" else Qwen2Config
    hf = conf_cls(
        vocab_size=vocab_size,
        **hf_sizes(cfg),
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=None,  # pad_token_id=0 crashed model init under zero.Init
        tie_word_embeddings=False,
    )
    hf._attn_implementation = attn
    return AutoModelForCausalLM.from_config(hf, attn_implementation=attn)
