"""The ``tools`` section of a training config: which tools the executor loads (score, chat)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ToolsConfig:
    """User tool modules (each defines ``TOOLS``, see :mod:`mage_fast.apps.tools.registry`) besides the
    built-in ones, the per-call time limit and the model turns per episode."""

    modules: list[str] = field(default_factory=list)
    timeout_s: float = 30.0
    max_steps: int = 4

    def __post_init__(self) -> None:
        if not all(isinstance(m, str) and m for m in self.modules):
            raise ValueError(f"tools.modules must be dotted module paths, got {self.modules!r}")
        if float(self.timeout_s) <= 0:
            raise ValueError(f"tools.timeout_s must be > 0, got {self.timeout_s!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"tools.max_steps must be an int >= 1, got {self.max_steps!r}")
