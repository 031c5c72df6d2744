"""Shared inputs of the ce_mse tests: shapes, the loss weight, random inputs with ignored labels,
and a caller's mix of the outputs with its gradients."""

from __future__ import annotations

import importlib

import torch
from opsutil import grads, leaves

# The package attribute `mage_fast.ops.ce_mse` is the function; the module comes from importlib.
ce_mod = importlib.import_module("mage_fast.ops.ce_mse")
plan_mod = importlib.import_module("mage_fast.ops.ce_mse_plan")
N, V, H, M, D = 37, 101, 24, 5, 16
LAM = 0.7


def make(dtype=torch.float32, n=N, v=V, m=M, ignored=0.3):
    """hidden, weight, labels (random ignored places), img, img_target, img_mask."""
    hidden = torch.randn(n, H).to(dtype)
    weight = (torch.randn(v, H) / H**0.5).to(dtype)
    labels = torch.randint(0, v, (n,))
    labels[torch.rand(n) < ignored] = -100
    img = torch.randn(m, D).to(dtype)
    tgt = torch.randn(m, D).to(dtype)
    mask = torch.rand(m) < 0.6
    if m:
        mask[0] = True
    return hidden, weight, labels, img, tgt, mask


def combo(out):
    """A caller's mix of the outputs, as in `world*ce + lam*mse/gas` (plus loss)."""
    loss, ce, mse = out
    return 0.5 * loss + 2.0 * ce + LAM * mse / 3.0


def run(fn, data, dtype=None, **kw):
    """Outputs and grads of combo() w.r.t. hidden, weight, img."""
    h, w, lab, img, tgt, mask = data
    h, w, img = leaves(h, w, img, dtype=dtype)
    tgt = tgt.to(dtype or tgt.dtype)
    out = fn(h, w, lab, img, tgt, mask, LAM, **kw)
    return out, grads(combo(out), [h, w, img], torch.ones(()))
