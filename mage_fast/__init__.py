"""mage-fast: a custom-kernel training stack for MAGE-style multimodal LLMs."""

__version__ = "0.1.0"
