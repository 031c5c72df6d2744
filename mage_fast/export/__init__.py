"""Exports that leave the project: a mage-fast model as a transformers folder (remote code)."""
