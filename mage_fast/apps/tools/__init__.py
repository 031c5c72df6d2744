"""Multimodal tool calling's programs: the registry and executor, the agent, scores, the validator.
The row format and its conversions are :mod:`mage_fast.toolcall`; the built-in tools are the shapes
world's (:mod:`mage_fast.shapes.builtin`)."""
