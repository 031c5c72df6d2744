"""Triton kernels of mage-fast, installed as `mage_fast.kernels` (setup.py package_dir).

Launchers take and return tensors and know nothing of autograd or the model; the custom ops in
`mage_fast.ops` wrap them (backend="triton"). Import as `from mage_fast.kernels import ...`,
never `kernels`.

    patch_pool_fwd / patch_pool_bwd          token-layout k x k pooling            (patch_pool.py)
    ian_projection_fwd / ian_projection_bwd  LN(GELU(x w1^T + b1) w2^T + b2)       (ian_projection.py)
    ce_mse_fwd                               fused linear CE + MSE with gradients  (ce_mse.py)
    matmul                                   the shared GEMM with fused epilogues  (_gemm.py)

Launch settings (block sizes, warps, GEMM tiles) live in `_launch.py`. `TRITON_INTERPRET=1`
must be set before this package is first imported: Triton reads it when the kernels are decorated.
"""

from mage_fast.kernels import ce_mse as _ce_mse
from mage_fast.kernels._gemm import matmul
from mage_fast.kernels._launch import INTERPRET, on_tensor_device
from mage_fast.kernels.ian_projection import ian_projection_bwd, ian_projection_fwd
from mage_fast.kernels.patch_pool import patch_pool_bwd, patch_pool_fwd

# Every launcher runs under its tensors' device (_launch.on_tensor_device).
ce_mse_fwd = on_tensor_device(_ce_mse.ce_mse_fwd)

__all__ = [
    "INTERPRET",
    "ce_mse_fwd",
    "ian_projection_bwd",
    "ian_projection_fwd",
    "matmul",
    "patch_pool_bwd",
    "patch_pool_fwd",
]
