"""The built-in shapes world: its scenes, the single-image, multi-image and tool-calling data
written from them, and the tools that draw and edit scenes."""
