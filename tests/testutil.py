"""Helpers shared by test modules (a unique module name: several folders have a conftest.py)."""

from __future__ import annotations

import os
import subprocess

from mage_fast.model.config import AlignerConfig, LLMConfig, ModelConfig, VisionConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Master ports of this session's deepspeed launches: DeepSpeed's CPU all-reduce maps one
# shared-memory segment per rank and port in /dev/shm (~66 MiB each at these sizes). A finished
# launch unlinks its own (mage_fast.train.dist.shutdown); one that failed or was killed does not,
# and a whole suite would hold GBs of RAM: tests/conftest.py removes them after each test.
DS_PORTS: list[int] = []


def remove_ds_shm_buffers() -> None:
    """Unlink DeepSpeed's /dev/shm all-reduce segments of the ports in DS_PORTS (their runs ended;
    a launch that fails or is killed never reaches the ranks' own clean-up)."""
    from mage_fast.train.dist import shm_buffers

    while DS_PORTS:
        for path in shm_buffers(DS_PORTS.pop()):
            try:
                os.unlink(path)
            except OSError:
                pass


def make_dry_run(*args: str) -> list[str]:
    """The shell lines `make -n ARGS` prints in the repository, continuations joined. The caller's
    make variables are dropped: under `make test` the child make would otherwise print its
    "Entering/Leaving directory" lines among the commands."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")}
    cmd = ["make", "-n", "--no-print-directory", *args]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout.replace("\\\n", " ").splitlines()


def tiny_model_config(aligner: str = "ian") -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(
            image_size=24, patch_size=8, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2
        ),
        aligner=AlignerConfig(type=aligner, pool_k=2, num_heads=2, mlp_ratio=1.0),
        llm=LLMConfig(
            hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2, max_position_embeddings=128
        ),
    )


def uneven_captions_world(shapes_dir: str, root) -> str:
    """`root` (created) with the shapes world's images and tokenizer linked and a stage1.json whose
    every third row has no caption, so ranks and micro-batches differ in captioned images."""
    import json
    from pathlib import Path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name in ("images", "tokenizer"):
        os.symlink(os.path.join(shapes_dir, name), root / name)
    with open(os.path.join(shapes_dir, "stage1.json")) as f:
        rows = json.load(f)
    for r in rows[::3]:
        del r["caption"]
    (root / "stage1.json").write_text(json.dumps(rows))
    return str(root)


def turns(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    """A LLaVA/ShareGPT conversation from (role, text) pairs: [{"from": role, "value": text}, ...]."""
    return [{"from": role, "value": text} for role, text in pairs]
