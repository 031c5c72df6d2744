"""The public wrappers trace with torch.compile (fullgraph, aot_eager: no C++ codegen) and match eager."""

from __future__ import annotations

import torch
from opsutil import assert_compiled_matches

from mage_fast.ops import ce_mse, ian_projection, patch_pool


def test_patch_pool_compiles() -> None:
    assert_compiled_matches(lambda x: patch_pool(x, (5, 7), 2).square().sum(), [torch.randn(2, 35, 8)])


def test_ian_projection_compiles() -> None:
    C, D = 8, 12
    ts = [torch.randn(3, C), torch.randn(D, C), torch.randn(D), torch.randn(D, D), torch.randn(D)]
    ts += [torch.ones(D), torch.zeros(D)]
    assert_compiled_matches(lambda *t: ian_projection(*t).square().sum(), ts)


def test_ce_mse_compiles() -> None:
    lab = torch.randint(0, 20, (9,))
    lab[2] = -100
    tgt, mask = torch.randn(2, 4), torch.tensor([True, False])
    fn = lambda h, w, img: ce_mse(h, w, lab, img, tgt, mask, 0.5, num_items=7)[0]
    assert_compiled_matches(fn, [torch.randn(9, 8), torch.randn(20, 8), torch.randn(2, 4)])
