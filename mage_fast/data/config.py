"""Data section of the training config (a plain typed dataclass; YAML files are instances)."""

from __future__ import annotations

from dataclasses import dataclass

from mage_fast.template_names import TEMPLATE_NAMES


@dataclass
class DataConfig:
    """Where the LLaVA-format data lives and how it is filtered.

    Relative ``train``/``eval`` paths and ``image_folder`` resolve against ``root``; image paths in
    the rows resolve against ``root/image_folder``.
    """

    root: str = ""
    train: str = "train.json"
    eval: str | None = None
    # Held-out rows with reference answers (and a "qtype" each, as in the shapes world's eval.json):
    # exact-match accuracy per qtype every `eval_every` steps and at the end. Images resolve
    # against the file's own folder, as in `python -m mage_fast.apps.eval`.
    answers: str | None = None
    answers_limit: int = 0  # the first N rows of `answers`; 0: all
    image_folder: str = ""
    max_length: int = 256  # tokens after <image> expansion; longer samples are skipped, never truncated
    max_bad_fraction: float = 0.05  # abort before training when more samples than this are bad
    num_workers: int = 0  # DataLoader workers
    # auto: the template of init_from (vicuna_v1 for a LLaVA checkpoint), else "default"
    template: str = "auto"
    # Each micro-batch's samples packed into rows of at most max_length tokens (first-fit-decreasing),
    # attention and positions per sample: the same losses and gradients as unpacked (docs/packing.md).
    packing: bool = False
    # Micro-rounds of similar length, text-only and image rows apart (LLaVA's group_by_modality_length).
    group_by_length: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.train, str) or not self.train:
            raise ValueError(f"DataConfig.train must be a non-empty path, got {self.train!r}")
        if self.eval is not None and (not isinstance(self.eval, str) or not self.eval):
            raise ValueError(f"DataConfig.eval must be a non-empty path or None, got {self.eval!r}")
        if self.answers is not None and (not isinstance(self.answers, str) or not self.answers):
            raise ValueError(f"DataConfig.answers must be a non-empty path or None, got {self.answers!r}")
        if not isinstance(self.answers_limit, int) or self.answers_limit < 0:
            raise ValueError(f"DataConfig.answers_limit must be an int >= 0, got {self.answers_limit!r}")
        if not isinstance(self.max_length, int) or self.max_length < 1:
            raise ValueError(f"DataConfig.max_length must be a positive int, got {self.max_length!r}")
        if not 0.0 <= float(self.max_bad_fraction) <= 1.0:
            raise ValueError(f"DataConfig.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction!r}")
        if self.template not in ("auto", *TEMPLATE_NAMES):
            raise ValueError(f"DataConfig.template must be one of {('auto', *TEMPLATE_NAMES)}, got {self.template!r}")
        for name in ("packing", "group_by_length"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DataConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be an int >= 0, got {self.num_workers!r}")
