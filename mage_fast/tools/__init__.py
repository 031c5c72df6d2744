"""Multimodal tool calling: row format, converters, validator, registry and executor, scores.

Submodules are imported where used (``mage_fast.toolcall.format`` is light; the built-in tools pull in
the shapes world's drawing code).
"""
