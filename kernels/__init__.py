"""Triton kernels of mage-fast, installed as `mage_fast.kernels` (setup.py package_dir).

Launchers take and return tensors, run under their tensors' device and know nothing of autograd
or the model; the custom ops in `mage_fast.ops` wrap them (backend="triton"). Import as
`from mage_fast.kernels import ...`, never `kernels`.

    patch_pool_fwd / patch_pool_bwd          token-layout k x k pooling            (patch_pool.py)
    gelu_mlp_fwd / bias_layernorm_fwd        ian_projection's GEMMs, then its LayerNorm (ian_projection.py)
    linear_layernorm_bwd / linear_gelu_bwd   their backwards
    linear_ce_fwd / masked_mse_fwd           the two halves of ce_mse, with gradients (ce_mse.py)
    matmul                                   the shared GEMM with fused epilogues  (_gemm.py)

Launch settings (block sizes, warps, GEMM tiles) live in `_launch.py`. `TRITON_INTERPRET=1`
must be set before this package is first imported: Triton reads it when the kernels are decorated.
"""

from mage_fast.kernels._gemm import matmul
from mage_fast.kernels._launch import INTERPRET
from mage_fast.kernels.ce_mse import linear_ce_fwd, masked_mse_fwd
from mage_fast.kernels.ian_projection import (
    bias_layernorm_fwd,
    gelu_mlp_fwd,
    linear_gelu_bwd,
    linear_layernorm_bwd,
)
from mage_fast.kernels.patch_pool import patch_pool_bwd, patch_pool_fwd

__all__ = [
    "INTERPRET",
    "bias_layernorm_fwd",
    "gelu_mlp_fwd",
    "linear_ce_fwd",
    "linear_gelu_bwd",
    "linear_layernorm_bwd",
    "masked_mse_fwd",
    "matmul",
    "patch_pool_bwd",
    "patch_pool_fwd",
]
