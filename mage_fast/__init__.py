"""mage-fast: a custom-kernel training stack for MAGE-style multimodal LLMs."""

import torch  # noqa: F401  (loads libc10/libtorch so `mage_fast._C` imports on its own)

__version__ = "0.1.0"
