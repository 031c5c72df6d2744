"""Triton kernels of mage-fast, installed as `mage_fast.kernels`.

Launchers here take and return tensors and know nothing of autograd or the model; the custom
ops in `mage_fast.ops` wrap them. Import as `from mage_fast.kernels import ...`, never `kernels`.
The Triton backends land with the kernel issue; until then this package is empty on purpose.
"""
