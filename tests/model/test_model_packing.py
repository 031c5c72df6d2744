"""Packing is exact: a packed batch gives the unpacked batch's per-sample losses and gradients
(fp32, CPU) for every aligner and every ce_mse backend on this machine, and no sample's tokens or
images reach another sample of its row."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.data import Collator
from mage_fast.model.mllm import MageModel
from mage_fast.ops import available

IMG, VOCAB, PAD, S = 5, 40, 0, 24
REL = 1e-5  # max |packed - unpacked| / max |unpacked| per loss and per parameter gradient
ALIGNERS = ["ian", "mlp2x_gelu", "linear", "pool_mlp", "sam"]
CE_MSE = available("ce_mse", "cpu")
# images per sample: SAM with 1-4 per sample; the others also mix in text-only samples
COUNTS = {"sam": [3, 1, 4, 2, 1], "default": [1, 0, 2, 0, 1]}


def _model(aligner: str, backend: str = "torch", attn: str = "auto") -> MageModel:
    """A tiny model with every parameter moved off its init, so the zero-initialised layers
    (IAN's SEB out-projections, SAM's guidance) carry signal that a leak would expose."""
    cfg = tiny_model_config(aligner)
    llm = dataclasses.replace(cfg.llm, attn_implementation=attn)
    cfg = dataclasses.replace(cfg, llm=llm, kernels=dataclasses.replace(cfg.kernels, ce_mse=backend), mse_lambda=0.5)
    torch.manual_seed(0)
    m = MageModel(cfg, VOCAB, IMG)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _samples(t: int, counts: list[int], seed: int = 0) -> list[dict]:
    """Dataset-like samples: a labelled first token (only an unpacked row may ignore it), images,
    then text with the answer labelled; lengths differ so several share a packed row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(counts):
        text = torch.randint(6, VOCAB, (3 + 2 * k,), generator=g)
        ids = torch.cat([torch.tensor([7 + k]), torch.full((t * n,), IMG), text])
        labels = ids.clone()
        labels[1 : 1 + t * n + 1] = -100  # images and the first text token carry no loss
        caps = [torch.randint(6, VOCAB, (2 + (k + i) % 3,), generator=g) for i in range(n)]
        if n > 1:
            caps[-1] = caps[-1][:0]  # one image without a caption
        px = torch.randn(n, 3, S, S, generator=g)
        out.append({"id": f"s{k}", "input_ids": ids, "labels": labels, "pixel_values": px, "caption_ids": caps})
    return out


def _owners(batch: dict, lengths: dict[str, int]) -> torch.Tensor:
    """(R, L) index of the batch sample owning each position, -1 on padding."""
    own = torch.full(batch["input_ids"].shape, -1)
    rows = batch.get("sample_rows", torch.arange(len(batch["ids"])))
    at: dict[int, int] = {}
    for i, (sid, r) in enumerate(zip(batch["ids"], rows.tolist())):
        a = at.get(r, 0)
        own[r, a : a + lengths[sid]] = i
        at[r] = a + lengths[sid]
    return own


def _only(batch: dict, i: int, own: torch.Tensor) -> dict:
    """The batch with labels and captions of every sample but the i-th masked out."""
    img_owner = torch.repeat_interleave(torch.arange(len(batch["ids"])), batch["image_counts"])
    return {
        **batch,
        "labels": batch["labels"].masked_fill(own != i, -100),
        "caption_mask": batch["caption_mask"] & (img_owner == i)[:, None],
    }


def _per_sample(m: MageModel, batch: dict, lengths: dict[str, int]) -> dict[str, float]:
    """sample id → its CE + λ·MSE with the rest of the batch present (masked from the loss)."""
    own = _owners(batch, lengths)
    with torch.no_grad():
        return {sid: m(**_only(batch, i, own))["loss"] for i, sid in enumerate(batch["ids"])}


def _grads(m: MageModel, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m.zero_grad(set_to_none=True)
    loss = m(**batch)["loss"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def _batches(m: MageModel, counts: list[int]) -> tuple[dict, dict, dict[str, int]]:
    samples = _samples(m.num_image_tokens, counts)
    lengths = {s["id"]: len(s["input_ids"]) for s in samples}
    cap = max(lengths.values()) + min(lengths.values()) + 4  # rows of two or more samples
    packed = Collator(PAD, S, pack_length=cap)(samples)
    assert packed["input_ids"].shape[0] < len(samples), "the test needs rows holding several samples"
    return Collator(PAD, S)(samples), packed, lengths


@pytest.mark.parametrize(
    "aligner,backend,attn",
    [(a, b, "auto") for a in ALIGNERS for b in CE_MSE] + [("ian", "torch", "sdpa"), ("ian", "torch", "eager")],
)
def test_packed_equals_unpacked(aligner, backend, attn):
    """Per-sample losses and every parameter's gradient within REL (fp32, CPU). attn auto is
    sdpa_packed (per-sample sdpa calls); sdpa and eager run HF's block-diagonal mask."""
    m = _model(aligner, backend, attn)
    unpacked, packed, lengths = _batches(m, COUNTS.get(aligner, COUNTS["default"]))
    lu, lp = _per_sample(m, unpacked, lengths), _per_sample(m, packed, lengths)
    loss_err = max(abs(float(lp[k] - lu[k])) / abs(float(lu[k])) for k in lu)
    (tu, gu), (tp, gp) = _grads(m, unpacked), _grads(m, packed)
    assert gu.keys() == gp.keys()
    exact_zero = [n for n in gu if n.endswith("k_proj.bias")]
    errs = {n: _rel(gp[n], gu[n]) for n in gu if n not in exact_zero and gu[n].abs().max() > 0}
    worst = max(errs, key=errs.get)
    print(f"{aligner}/{backend}/{attn}: loss rel err {loss_err:.2e}, worst grad {worst} {errs[worst]:.2e}")
    assert loss_err <= REL
    assert _rel(tp, tu) <= REL
    assert errs[worst] <= REL
    # A key bias adds the same amount to all of a query's scores, which the softmax removes: its
    # gradient is zero up to rounding in both runs, so only its size is checked.
    top = max(float(g.abs().max()) for g in gu.values())
    assert all(max(float(gu[n].abs().max()), float(gp[n].abs().max())) <= 1e-6 * top for n in exact_zero)
    zero = [n for n in gu if n not in exact_zero and gu[n].abs().max() == 0]
    assert all(gp[n].abs().max() == 0 for n in zero)


def _two_in_a_row(m: MageModel) -> tuple[dict, dict[str, int], list[dict]]:
    """One packed row: a longer sample first (FFD), a shorter one after it, both with images."""
    samples = _samples(m.num_image_tokens, [2, 2], seed=1)
    samples[0]["input_ids"] = torch.cat([samples[0]["input_ids"], torch.tensor([9, 10, 11, 12])])
    samples[0]["labels"] = torch.cat([samples[0]["labels"], torch.tensor([9, 10, 11, 12])])
    lengths = {s["id"]: len(s["input_ids"]) for s in samples}
    batch = Collator(PAD, S, pack_length=sum(lengths.values()))(samples)
    assert batch["input_ids"].shape[0] == 1 and batch["ids"] == ["s0", "s1"]
    return batch, lengths, samples


def _perturbed_first(samples: list[dict], lengths: dict[str, int]) -> dict:
    """The same row with the first sample's text tokens and pixels changed."""
    a = dict(samples[0])
    ids = a["input_ids"].clone()
    text = ids != IMG
    text[0] = False
    ids[text] = (ids[text] + 3 - 6) % (VOCAB - 6) + 6
    a["input_ids"], a["pixel_values"] = ids, a["pixel_values"] + 1.0
    return Collator(PAD, S, pack_length=sum(lengths.values()))([a, samples[1]])


@pytest.mark.parametrize("aligner", ["ian", "sam"])
def test_no_attention_across_samples(aligner):
    """Changing the first sample's tokens and images leaves the second's loss unchanged; the
    same row run as one causal sequence (no per-sample positions) does change it, so the test
    would fail on a leak through attention, positions or SAM's guidance."""
    m = _model(aligner)
    batch, lengths, samples = _two_in_a_row(m)
    other = _perturbed_first(samples, lengths)
    second = _per_sample(m, batch, lengths)["s1"]
    torch.testing.assert_close(_per_sample(m, other, lengths)["s1"], second, rtol=1e-6, atol=0)
    as_one = {k: v for k, v in batch.items() if k not in ("position_ids",)}
    other_one = {k: v for k, v in other.items() if k not in ("position_ids",)}
    leaked = _per_sample(m, as_one, lengths)["s1"] - _per_sample(m, other_one, lengths)["s1"]
    assert abs(float(leaked)) > 1e-4


def test_packed_attention_is_block_diagonal():
    """The hidden states of a packed sample equal those of the sample alone."""
    m = _model("ian").eval()
    batch, lengths, samples = _two_in_a_row(m)
    with torch.no_grad():
        embeds, _ = m.embed(
            batch["input_ids"], batch["pixel_values"], batch["image_counts"], None, batch["sample_rows"]
        )
        # use_cache=False as in forward: with a cache HF does not read packed position ids
        h = m.llm.base_model(inputs_embeds=embeds, position_ids=batch["position_ids"], use_cache=False)
        h = h.last_hidden_state
        alone = Collator(PAD, S)([samples[1]])
        e1, _ = m.embed(alone["input_ids"], alone["pixel_values"], alone["image_counts"])
        h1 = m.llm.base_model(inputs_embeds=e1).last_hidden_state
    n0 = lengths["s0"]
    torch.testing.assert_close(h[0, n0:], h1[0], rtol=1e-5, atol=1e-6)


def test_packed_placeholder_mismatch_names_the_row():
    m = _model("ian")
    batch, _, _ = _two_in_a_row(m)
    batch["image_counts"] = torch.tensor([2, 1])
    batch["pixel_values"] = batch["pixel_values"][:3]
    batch["caption_ids"], batch["caption_mask"] = batch["caption_ids"][:3], batch["caption_mask"][:3]
    with pytest.raises(ValueError, match=r"packed row 0 \(samples s0, s1\): \d+ image placeholder tokens but 3"):
        m(**batch)
