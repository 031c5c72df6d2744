"""A look inside a trained SAM aligner on held-out sets: its guidance weights and whether it is used.

- :func:`set_guidance`: for one set of n images, alpha (U, n, P), the softmax weights over the
  set's images per patch position of each context (U = 1 with include-self, n with exclude-self),
  and the size of the guidance each image's query receives, ||P21(c_i)|| / ||b_i||.
- :func:`probe`: over held-out sets, how far alpha is from uniform (normalised entropy, 1 =
  uniform), how much weight the patches under the linked object get relative to uniform
  (``link_lift``, 1 = no preference) and the mean guidance size.
- :func:`draw_maps`: the paper's Fig. 1 style picture: each image of a set with its alpha drawn
  over it and the linked object boxed.
- :func:`answers` with ``guidance=False``: the same trained model with P21 zeroed, so every
  image's tokens are its plain IAN pass (a knock-out of the context stream).
"""

from __future__ import annotations

import math
import os

import torch

from mage_fast.data.image import ImageTransform, load_image
from mage_fast.model.sam import context_pairs, grouped_softmax
from mage_fast.train.answering import answer, length_buckets, prepare


def _pixels(model, data: str, row: dict) -> torch.Tensor:

    t = ImageTransform(model.image_size)
    return torch.stack([t(load_image(os.path.join(data, p))) for p in row["image"]])


@torch.no_grad()
def set_guidance(aligner, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v (n, P, C) one set's patch features → (alpha (U, n, P), zero where an image is not in a
    context; guidance size (n,) = ||P21(c_i)|| / ||b_i|| over image i's tokens)."""
    n = v.shape[0]
    counts = torch.tensor([n])
    unit, src, _, ctx_of = context_pairs(counts, aligner.include_self)
    n_units = int(ctx_of.max()) + 1
    alpha = grouped_softmax(aligner.score(v).squeeze(-1).float(), unit, src, n_units)
    full = torch.zeros(n_units, n, v.shape[1])
    full[unit, src] = alpha
    b = aligner.pool_norm(aligner.pool_proj(aligner.pool(v)))
    g = aligner.guidance(v, b, counts)
    return full, g.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def per_image_map(alpha: torch.Tensor) -> torch.Tensor:
    """alpha (U, n, P) → (n, P): each image's weight averaged over the contexts it is in."""
    member = (alpha.sum(-1, keepdim=True) > 0).float()  # (U, n, 1)
    return alpha.sum(0) / member.sum(0).clamp(min=1)


def link_patches(cell: int, grid: int) -> list[int]:
    """Patch indices (row-major, grid x grid) under a 3x3-world cell."""
    r, c = divmod(cell, 3)
    rows = range(r * grid // 3, (r + 1) * grid // 3)
    cols = range(c * grid // 3, (c + 1) * grid // 3)
    return [i * grid + j for i in rows for j in cols]


@torch.no_grad()
def probe(model, data: str, rows: list[dict]) -> dict[str, float]:
    """Guidance statistics over held-out sets (see the module docstring)."""
    model.eval()
    grid = model.vision_tower.grid
    ent, lift, size = [], [], []
    for row in rows:
        v = model.vision_tower(_pixels(model, data, row))
        alpha, g = set_guidance(model.aligner, v)
        size += g.tolist()
        for u in range(alpha.shape[0]):
            members = (alpha[u].sum(-1) > 0).nonzero().flatten().tolist()
            if len(members) < 2:
                continue  # a softmax over one image is 1 everywhere: nothing to measure
            a = alpha[u, members]  # (m, P)
            ent.append(float(-(a * a.clamp(min=1e-12).log()).sum(0).mean()) / math.log(len(members)))
            for j in members:
                if row["link"][j] is not None:
                    lift.append(float(alpha[u, j, link_patches(row["link"][j][2], grid)].mean()) * len(members))
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {"entropy": mean(ent), "link_lift": mean(lift), "guidance_size": mean(size), "sets": len(rows)}


@torch.no_grad()
def answers(model, tok, data: str, rows: list[dict], max_new_tokens: int, guidance: bool = True) -> dict[str, str]:
    """id → greedy answer on ``rows``; ``guidance=False`` zeroes P21 (restored afterwards)."""
    model.eval()
    saved = None
    if not guidance:
        saved = [p.detach().clone() for p in model.aligner.p21.parameters()]
        for p in model.aligner.p21.parameters():
            p.zero_()
    try:
        items = prepare(rows, model, tok, data)
        for group in length_buckets(items):
            for i in range(0, len(group), 64):
                answer(model, tok, group[i : i + 64], max_new_tokens)
    finally:
        if saved is not None:
            for p, s in zip(model.aligner.p21.parameters(), saved):
                p.copy_(s)
    return {it["id"]: it["text"] for it in items}


@torch.no_grad()
def draw_maps(model, data: str, rows: list[dict], said: dict[str, dict[str, str]], path: str) -> None:
    """One figure row per set: its images with the per-image alpha map over them (uniform =
    1 / images in the context), the linked object boxed; the title gives the reference and each
    variant's answer from ``said`` (variant → id → text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    model.eval()
    grid, width = model.vision_tower.grid, max(len(r["image"]) for r in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(2.2 * width, 3.0 * len(rows)), squeeze=False)
    fig.subplots_adjust(hspace=0.9)  # room for each set's answers under its images
    for ax_row, row in zip(axes, rows):
        alpha, _ = set_guidance(model.aligner, model.vision_tower(_pixels(model, data, row)))
        maps = per_image_map(alpha).view(-1, grid, grid)
        for j, ax in enumerate(ax_row):
            ax.axis("off")
            if j >= len(row["image"]):
                continue
            img = Image.open(os.path.join(data, row["image"][j])).convert("RGB")
            size = img.size[0]
            ax.imshow(img, extent=(0, size, size, 0))
            im = ax.imshow(maps[j].numpy(), extent=(0, size, size, 0), cmap="magma", alpha=0.55, vmin=0, vmax=1)
            if row["link"][j] is not None:
                r, c = divmod(row["link"][j][2], 3)
                ax.add_patch(Rectangle((c * size / 3, r * size / 3), size / 3, size / 3, fill=False, ec="cyan", lw=2))
            ax.set_title(f"image {j + 1}", fontsize=7)
        lines = [f'{row["task"]}: ref "{row["refs"][0]}"'] + [f'{v}: "{s.get(row["id"], "")}"' for v, s in said.items()]
        ax_row[0].text(0, -0.06, "\n".join(lines), transform=ax_row[0].transAxes, fontsize=6, va="top")
    fig.colorbar(im, ax=axes, shrink=0.6, label="alpha (weight in the context)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
