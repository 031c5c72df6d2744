"""Traffic/FLOP model of patch_pool's Triton path: a 24 x 24 grid, k = 2, B = 64 images, C = 1024
(a CLIP-L tower's width), bf16. Reads the kernel's real layout (`_launch.pool_settings`): the
fraction of lanes a tile masks off costs issue slots (CUDA-core work divided by the lane use).
The op is a pure memory stream: each input element read once, each output written once."""

from __future__ import annotations

from mage_fast.kernels import _launch

from benchmarks.model.roofline import Device, Row

OP = "patch_pool"
B, H, W, K, C = 64, 24, 24, 2, 1024
E = 2
SHAPE = f"B={B} {H}x{W} k={K} C={C} bf16"


def lane_use() -> tuple[float, str]:
    """(fraction of tile lanes that hold an output, the tile) for the model's shape."""
    wo = -(-W // K)
    bw, bc, warps = _launch.pool_settings(C, wo, E, interpret=False)
    use = (wo / (-(-wo // bw) * bw)) * (C / (-(-C // bc) * bc))
    return use, f"BLOCK_W={bw} BLOCK_C={bc} warps={warps}, {use:.0%} lanes used"


def rows(dev: Device) -> list[Row]:
    """Forward and backward rows (the counts do not depend on `dev`; the times do)."""
    ho, wo = -(-H // K), -(-W // K)
    x, y = float(B * H * W * C), float(B * ho * wo * C)
    use, note = lane_use()
    return [
        Row(OP, "triton", "forward", SHAPE, bytes=(x + y) * E, cuda_flops=(x + y) / use, note=note),
        Row(OP, "triton", "backward", SHAPE, bytes=(x + y) * E, cuda_flops=(x + y) / use, note=note),
    ]
