"""Small cases of every op on its native and Triton backends, forward and backward, for
compute-sanitizer memcheck in `make gpu-check` (odd sizes: every edge mask and tail is hit).

    python .ci/gpu_sanitize_cases.py --device cuda     # cuda + triton, under compute-sanitizer
    python .ci/gpu_sanitize_cases.py --device cpu      # cpp + triton (TRITON_INTERPRET=1): the rehearsal
"""

from __future__ import annotations

import argparse

import torch

from mage_fast.ops import ce_mse, ian_projection, patch_pool


def cases(backend: str, dev: torch.device, dt: torch.dtype) -> None:
    """patch_pool, ian_projection and ce_mse forward + backward on `backend` at odd sizes."""
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    dev = torch.device(p.parse_args().device)
    for backend in ("cuda" if dev.type == "cuda" else "cpp", "triton"):
        for dt in (torch.float32, torch.bfloat16):
            cases(backend, dev, dt)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        print(f"sanitize cases: backend {backend} on {dev.type} ok")


if __name__ == "__main__":
    main()
