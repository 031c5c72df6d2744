"""Small cases of every op on its `cuda` and `triton` backends, forward and backward, for
compute-sanitizer memcheck in `make gpu-check` (odd sizes: every edge mask and tail is hit)."""

from __future__ import annotations

import torch

from mage_fast.ops import ce_mse, ian_projection, patch_pool

dev = torch.device("cuda")
for backend in ("cuda", "triton"):
    for dt in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 5 * 7, 130, device=dev, dtype=dt, requires_grad=True)
        patch_pool(x, (5, 7), 2, backend=backend).sum().backward()
        C, D = 33, 97
        ts = [torch.randn(65, C), torch.randn(D, C), torch.randn(D), torch.randn(D, D), torch.randn(D)]
        ts = [t.to(dev, dt).requires_grad_() for t in ts + [torch.ones(D), torch.zeros(D)]]
        ian_projection(*ts, backend=backend).sum().backward()
        h = torch.randn(37, 48, device=dev, dtype=dt, requires_grad=True)
        w = torch.randn(1000, 48, device=dev, dtype=dt, requires_grad=True)
        lab = torch.randint(0, 1000, (37,), device=dev)
        lab[::5] = -100
        img = torch.randn(3, 16, device=dev, dtype=dt, requires_grad=True)
        mask = torch.tensor([True, False, True], device=dev)
        ce_mse(h, w, lab, img, torch.randn_like(img), mask, 0.5, backend=backend)[0].backward()
    torch.cuda.synchronize()
    print(f"sanitize cases: backend {backend} ok")
