"""The `sam` aligner: equal to `ian` at init, one-image rows are IAN, guidance gradients,
include/exclude-self, the context once per sample, 1/2/4 images per row in one batch."""

from __future__ import annotations

import pytest
import torch
from testutil import tiny_model_config

from mage_fast.model.aligner import build_aligner
from mage_fast.model.config import AlignerConfig, KernelConfig
from mage_fast.model.ian import IANAligner
from mage_fast.model.mllm import MageModel
from mage_fast.model.sam import SAMAligner, context_pairs, grouped_softmax_sum

C, D, G = 16, 32, 4
COUNTS = [1, 2, 4]


def _pair(include_self: bool = True) -> tuple[IANAligner, SAMAligner]:
    cfg = AlignerConfig(type="sam", num_heads=2, mlp_ratio=1.0, sam_include_self=include_self)
    torch.manual_seed(0)
    ian = build_aligner(AlignerConfig(type="ian", num_heads=2, mlp_ratio=1.0), C, D, G, KernelConfig())
    torch.manual_seed(0)
    sam = build_aligner(cfg, C, D, G, KernelConfig())
    return ian, sam


def _perturb(sam: SAMAligner) -> None:
    """Move the guidance and every zero-initialised layer away from init."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in (sam.p12, sam.p21, sam.score, sam.attn.out, sam.mlp.fc2):
            for p in mod.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _v(n: int = sum(COUNTS)) -> torch.Tensor:
    return torch.randn(n, G * G, C, generator=torch.Generator().manual_seed(2))


def test_sam_equals_ian_at_init_every_element():
    ian, sam = _pair()
    v, counts = _v(), torch.tensor(COUNTS)
    assert torch.equal(sam(v, counts), ian(v))
    assert torch.equal(sam(v), ian(v))


def test_model_loss_equal_at_init():
    losses = []
    for kind in ("ian", "sam"):
        torch.manual_seed(0)
        m = MageModel(tiny_model_config(kind), 40, 5)
        t, s = m.num_image_tokens, m.image_size
        ids = torch.tensor([[1] + [5] * t * n + [7, 8, 9] + [0] * t * (4 - n) for n in COUNTS])
        labels = torch.where(ids >= 7, ids, torch.tensor(-100))
        pix = torch.randn(sum(COUNTS), 3, s, s, generator=torch.Generator().manual_seed(3))
        out = m(ids, (ids != 0).long(), labels, pix, torch.tensor(COUNTS))
        losses.append(out["loss"])
    assert torch.equal(losses[0], losses[1]), losses


@pytest.mark.parametrize("include_self", [True, False])
def test_one_image_row_is_plain_ian(include_self):
    ian, sam = _pair(include_self)
    _perturb(sam)
    ian.load_state_dict({k: v for k, v in sam.state_dict().items() if k in ian.state_dict()})
    v, counts = _v(), torch.tensor(COUNTS)
    z_sam, z_ian = sam(v, counts), ian(v)
    assert torch.equal(z_sam[:1], z_ian[:1])
    assert (z_sam[1:] - z_ian[1:]).abs().amax(dim=(1, 2)).min() > 1e-3  # every multi-image row moved


def test_guidance_gets_gradients():
    # Exact zeros only where exact arithmetic gives them: behind the zero-initialised P21 every
    # product with its weights is 0.0 on any CPU. After one step the weights' gradients are compared
    # with their own scale, so no assertion rests on the order of a kernel's float operations.
    _, sam = _pair()
    v, counts = _v(), torch.tensor(COUNTS)
    opt = torch.optim.SGD(sam.parameters(), lr=0.1)
    target = torch.randn(sum(COUNTS), sam.pos.shape[0], D, generator=torch.Generator().manual_seed(4))
    grads = []
    for _ in range(2):
        opt.zero_grad()
        ((sam(v, counts) - target) ** 2).mean().backward()
        grads.append({n: p.grad.abs().mean().item() for n, p in sam.named_parameters() if n.split(".")[0]
                      in ("p12", "p21", "score")})  # fmt: skip
        opt.step()
    print(grads)
    assert grads[0]["p21.weight"] > 1e-6  # image stream reads c_i through P21 from step 0
    assert grads[0]["p12.weight"] == 0 and grads[0]["score.weight"] == 0  # behind the zero P21
    assert all(g > 1e-6 for g in grads[1].values()), grads[1]  # one step away from init: all learn


def test_score_has_no_bias_and_old_weights_load():
    # A shift of every image's score leaves the softmax over images, so the output, unchanged.
    _, sam = _pair()
    _perturb(sam)
    assert sam.score.bias is None and "score.bias" not in sam.state_dict()
    v, counts = _v(), torch.tensor(COUNTS)
    old = dict(sam.state_dict(), **{"score.bias": torch.tensor([5.0])})
    _, back = _pair()
    back.load_state_dict(old)
    torch.testing.assert_close(back(v, counts), sam(v, counts))


def test_exclude_self_differs_and_contexts_are_right():
    v, counts = _v(), torch.tensor(COUNTS)
    _, inc = _pair(True)
    _, exc = _pair(False)
    _perturb(inc)
    exc.load_state_dict(inc.state_dict())
    z_i, z_e = inc(v, counts), exc(v, counts)
    assert torch.equal(z_i[:1], z_e[:1])
    assert not torch.allclose(z_i[1:], z_e[1:], atol=1e-4)
    s = torch.randn(7, G * G)
    # include-self: one context per multi-image sample, softmax over all its images
    unit, src, guided, ctx_of = context_pairs(counts, True)
    ctx = grouped_softmax_sum(s, v, unit, src, 2)
    want = (torch.softmax(s[3:7], 0).unsqueeze(-1) * v[3:7]).sum(0)
    torch.testing.assert_close(ctx[1], want)
    assert guided.tolist() == [1, 2, 3, 4, 5, 6] and ctx_of.tolist() == [0, 0, 1, 1, 1, 1]
    # exclude-self: one per image; of a two-image sample it is the other image
    unit, src, guided, ctx_of = context_pairs(counts, False)
    ctx = grouped_softmax_sum(s, v, unit, src, 6)
    torch.testing.assert_close(ctx[0], v[2])
    want = (torch.softmax(s[[3, 4, 6]], 0).unsqueeze(-1) * v[[3, 4, 6]]).sum(0)
    torch.testing.assert_close(ctx[ctx_of[guided.tolist().index(5)]], want)


def test_context_once_per_sample_and_fixed_module_calls():
    _, sam = _pair()
    rows: list[int] = []
    sam.vab.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    sam(_v(), torch.tensor(COUNTS))
    assert rows == [7, 2]  # the images, then one context per multi-image sample
    rows.clear()
    sam(_v(3), torch.tensor([1, 1, 1]))  # no multi-image sample: the same calls, on a dummy
    assert rows == [3, 1]


def test_mixed_counts_backward_and_errors():
    _, sam = _pair(False)
    _perturb(sam)
    v = _v().requires_grad_()
    z = sam(v, torch.tensor(COUNTS))
    assert z.shape == (7, sam.pos.shape[0], D) and torch.isfinite(z).all()
    z.sum().backward()
    assert torch.isfinite(v.grad).all()
    with pytest.raises(ValueError, match="sum to"):
        sam(_v(), torch.tensor([1, 2]))


def test_export_round_trip_keeps_the_switch_and_weights(tokenizer, tmp_path):
    from mage_fast.export import pretrained
    from mage_fast.train.engine import export_state

    torch.manual_seed(0)
    cfg = tiny_model_config("sam")
    cfg.aligner.sam_include_self = False
    model = MageModel(cfg, len(tokenizer), tokenizer.convert_tokens_to_ids("<image>")).eval()
    _perturb(model.aligner)
    pretrained.write_export(str(tmp_path / "e"), model, tokenizer, export_state(model))
    back, _ = pretrained.load_pretrained(str(tmp_path / "e"))
    assert isinstance(back.aligner, SAMAligner) and back.aligner.include_self is False
    pix = torch.randn(3, 3, model.image_size, model.image_size)
    with torch.no_grad():
        counts = torch.tensor([1, 2])
        torch.testing.assert_close(back.encode_images(pix, counts), model.encode_images(pix, counts))
