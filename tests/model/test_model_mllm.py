"""The model: aligner shapes, IAN's zero-init, the merge and its errors, text-only and multi-image."""

from __future__ import annotations

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.model.mllm import MageModel
from mage_fast.ops import reference

IMG = 5  # image token id used by these tests
VOCAB = 40


def _model(aligner: str = "ian") -> MageModel:
    torch.manual_seed(0)
    return MageModel(tiny_model_config(aligner), VOCAB, IMG)


def _batch(model: MageModel, image_counts: list[int], length: int = 20) -> dict:
    """Right-padded batch: each sample = [1] + T image ids per image + text; labels on the last 3."""
    t = model.num_image_tokens
    rows, labels = [], []
    for n in image_counts:
        ids = [1] + [IMG] * (t * n) + [7, 8, 9, 10, 11]
        lab = [-100] * (len(ids) - 3) + ids[-3:]
        rows.append(ids)
        labels.append(lab)
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    lab = torch.full((len(rows), L), -100)
    am = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (r, y) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(y)] = torch.tensor(y)
        am[i, : len(r)] = 1
    n_img = sum(image_counts)
    s = model.image_size
    caps = torch.randint(6, VOCAB, (n_img, 4))
    return {"input_ids": ids, "attention_mask": am, "labels": lab, "pixel_values": torch.randn(n_img, 3, s, s),
            "image_counts": torch.tensor(image_counts), "caption_ids": caps,
            "caption_mask": torch.ones(n_img, 4, dtype=torch.bool), "ids": [f"s{i}" for i in range(len(rows))]}  # fmt: skip


@pytest.mark.parametrize("aligner,tokens", [("ian", 4), ("pool_mlp", 4), ("mlp2x_gelu", 9), ("linear", 9)])
def test_aligner_token_counts(aligner, tokens):
    m = _model(aligner)
    assert m.num_image_tokens == tokens
    z = m.encode_images(torch.randn(3, 3, 24, 24))
    assert z.shape == (3, tokens, m.llm.config.hidden_size)


def test_ian_is_pooled_branch_at_init():
    """Zero-initialised out-projection and last MLP layer: Z = LN(Wp · PatchPool(V)) at step 0."""
    m = _model("ian")
    v = torch.randn(2, 9, 32)
    a = m.aligner
    b = a.pool_norm(a.pool_proj(reference.patch_pool_ref(v, (3, 3), 2)))
    torch.testing.assert_close(a(v), b)


def test_ian_cell_embedding_init():
    """pos_init_std 0: the cell embedding starts at zero; > 0: N(0, std²), distinct per cell, the
    same for the same seed (every rank builds the same model)."""
    cfg = tiny_model_config("ian")
    assert torch.count_nonzero(MageModel(cfg, VOCAB, IMG).aligner.pos) == 0
    cfg.aligner.pos_init_std = 1.0
    torch.manual_seed(3)
    pos = MageModel(cfg, VOCAB, IMG).aligner.pos.detach()
    torch.manual_seed(3)
    torch.testing.assert_close(MageModel(cfg, VOCAB, IMG).aligner.pos.detach(), pos)
    assert pos.shape == (4, 32) and 0.7 < float(pos.std()) < 1.3
    assert torch.cdist(pos, pos).add(torch.eye(4) * 1e9).min() > 1.0


def test_ian_cell_embedding_std_must_not_be_negative():
    from mage_fast.model.config import AlignerConfig

    with pytest.raises(ValueError, match="pos_init_std"):
        AlignerConfig(pos_init_std=-0.5)


def test_forward_backward_mixed_counts():
    """Samples with 0, 1 and 2 images in one batch; every part gets a gradient."""
    m = _model()
    out = m(**_batch(m, [1, 0, 2]))
    assert out["n_tokens"] == 9
    assert torch.isfinite(out["loss"]) and out["mse"] > 0
    out["loss"].backward()
    for part in (m.vision_tower, m.aligner, m.llm):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.requires_grad)


def test_text_only_batch_runs_tower_and_contributes_nothing():
    m = _model()
    b = _batch(m, [0, 0])
    out = m(**b)
    out["loss"].backward()
    assert out["mse"] == 0
    # the tower ran (its parameters are in the graph) but its gradient is exactly zero
    grads = [p.grad for p in m.vision_tower.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(float(g.abs().sum()) == 0 for g in grads)


def test_merge_places_visual_tokens_in_order():
    m = _model()
    b = _batch(m, [2, 1])
    embeds, z = m.embed(b["input_ids"], b["pixel_values"], b["image_counts"])
    t = m.num_image_tokens
    torch.testing.assert_close(embeds[0, 1 : 1 + t], z[0])
    torch.testing.assert_close(embeds[0, 1 + t : 1 + 2 * t], z[1])
    torch.testing.assert_close(embeds[1, 1 : 1 + t], z[2])
    text = m.llm.get_input_embeddings()(b["input_ids"][0, 1 + 2 * t :])
    torch.testing.assert_close(embeds[0, 1 + 2 * t :], text)


def test_merge_mismatch_names_the_sample():
    m = _model()
    b = _batch(m, [1, 1])
    b["image_counts"] = torch.tensor([1, 2])
    b["pixel_values"] = torch.randn(3, 3, 24, 24)
    with pytest.raises(ValueError, match=r"sample s1: 4 image placeholder tokens but 2 image\(s\)"):
        m(**b)
    b = _batch(m, [1])
    b["input_ids"][0, 1] = 6  # one placeholder token lost
    with pytest.raises(ValueError, match="sample s0: 3 image placeholder tokens"):
        m(**b)


def test_generate_greedy_matches_full_forward():
    m = _model().eval()
    b = _batch(m, [1, 1])
    ids = b["input_ids"]  # both samples hold one image: equal lengths, no padding
    n = ids.shape[1]
    out = m.generate(ids, b["pixel_values"], b["image_counts"], max_new_tokens=4, eos_token_id=-1)
    # the same tokens by re-running the whole sequence each step (no cache)
    seq = ids.clone()
    for _ in range(4):
        e, _ = m.embed(seq, b["pixel_values"], b["image_counts"])
        nxt = m.llm(inputs_embeds=e).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], 1)
    assert [list(r) for r in seq[:, n:].tolist()] == out
