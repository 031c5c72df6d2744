"""sdpa_packed: per-sample spans from packed position ids; HF's sdpa unchanged on other batches."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mage_fast.model.packed_attention import NAME, segments


def test_segments_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert segments(pos) == [[(0, 3), (3, 5), (5, 6)], [(0, 4), (4, 6)]]
    assert segments(torch.arange(6)[None]) is None  # one sample per row: not packed


def _llms() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    conf = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    a = LlamaForCausalLM(conf).eval()
    b = LlamaForCausalLM(conf).eval()
    b.load_state_dict(a.state_dict())
    a.set_attn_implementation(NAME)
    b.set_attn_implementation("sdpa")
    return a, b


def test_padded_batch_is_sdpa_bit_for_bit():
    packed, plain = _llms()
    ids = torch.randint(0, 50, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        assert torch.equal(packed(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits)


def test_packed_row_equals_samples_alone_with_gqa():
    """Two samples in one row (grouped-query heads: 4 query, 2 kv) against each sample alone."""
    packed, _ = _llms()
    x, y = torch.randint(0, 50, (1, 7)), torch.randint(0, 50, (1, 5))
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None]
    with torch.no_grad():
        row = packed(torch.cat([x, y], 1), position_ids=pos, use_cache=False).logits
        torch.testing.assert_close(row[:, :7], packed(x, use_cache=False).logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(row[:, 7:], packed(y, use_cache=False).logits, rtol=1e-5, atol=1e-6)
