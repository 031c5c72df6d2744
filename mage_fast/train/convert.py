"""Convert a run's checkpoint to DeepSpeed's universal format, so another number of ranks can load it.

    python -m mage_fast.train.convert RUN_DIR [--tag stepNNNNNNNN]

writes `RUN_DIR/checkpoints/universal/<tag>/` with DeepSpeed's own converter
(`deepspeed.checkpoint.ds_to_universal`): one folder per parameter holding its full fp32 value
and AdamW moments (`fp32.pt`, `exp_avg.pt`, `exp_avg_sq.pt`), the optimizer's common state and
the model-state files (client state: step, data position, LR schedule). Without `--tag` it
converts the newest committed checkpoint; the source must be complete (every rank's files, as
the markers list them) and intact. A resume with another world size loads this copy when it
exists, also with `resume_resize=false`; without one it converts on the fly (`resume_resize`, on
by default) or refuses. The folder counts only once its `COMMITTED` marker is written (a
conversion killed midway is redone) and only for the save it was converted from (the marker
records the source's commit times; a later save of the same step is converted again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from types import SimpleNamespace

from mage_fast.train import checkpoint, ckpt_storage

UNIVERSAL = "universal"


def universal_root(run_dir: str) -> str:
    return os.path.join(checkpoint.ckpt_root(run_dir), UNIVERSAL)


def _source(run_dir: str, tag: str) -> dict:
    """Commit times of checkpoint `tag`'s markers: a copy converted from an earlier save of the same
    step (a run started over in the same run_dir) does not match them."""
    folder = os.path.join(checkpoint.ckpt_root(run_dir), tag)
    return {name: m.get("time") for name, m in ckpt_storage.read_markers(folder).items()}


def is_converted(run_dir: str, tag: str) -> bool:
    """A complete universal copy of this very save of `tag` exists."""
    try:
        with open(os.path.join(universal_root(run_dir), tag, checkpoint.MARKER)) as f:
            return json.load(f).get("source") == _source(run_dir, tag)
    except (OSError, ValueError, AttributeError):
        return False


def convert(run_dir: str, tag: str, workers: int = 1) -> str:
    """Universal copy of checkpoint `tag` (one process; reused when already complete). Returns its folder."""
    from deepspeed.checkpoint import ds_to_universal

    src = os.path.join(checkpoint.ckpt_root(run_dir), tag)
    out = os.path.join(universal_root(run_dir), tag)
    if is_converted(run_dir, tag):
        return out
    problem = checkpoint.incomplete(src) or checkpoint.check_files(src)
    if problem:
        raise checkpoint.ResumeError(f"cannot convert {src}: {problem}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    # inject_missing_state: ZeRO-1/2 conversion needs `universal_checkpoint_info` in the client
    # state; checkpoint.save writes it, and this covers checkpoints saved without it.
    args = SimpleNamespace(
        input_folder=src,
        output_folder=out,
        num_extract_workers=workers,
        num_merge_workers=workers,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    ds_to_universal.main(args)
    with open(os.path.join(src, checkpoint.META)) as f:
        meta = json.load(f)
    meta["converted_s"] = round(time.time() - t0, 3)
    with open(os.path.join(out, checkpoint.META), "w") as f:
        json.dump(meta, f)
    with open(os.path.join(out, checkpoint.MARKER), "w") as f:
        json.dump({"step": meta.get("step"), "time": time.time(), "source": _source(run_dir, tag)}, f)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.train.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--tag", default=None, help="checkpoint folder name (default: the newest committed one)")
    p.add_argument("--workers", type=int, default=1, help="processes that extract and merge the shards")
    args = p.parse_args(argv)
    tag = args.tag or checkpoint.newest(args.run_dir)
    if tag is None:
        sys.exit(f"no committed checkpoint in {checkpoint.ckpt_root(args.run_dir)}")
    try:
        print(convert(args.run_dir, tag, args.workers))
    except checkpoint.ResumeError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
