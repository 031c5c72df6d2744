"""Check every checkpoint of a run offline: `python -m mage_fast.train.verify RUN_DIR`.

Each committed checkpoint's files are compared with the sizes and blake2b hashes its markers
record (all ranks' files, in this one process); one line per checkpoint, which also says when a
folder holds only some ranks' files (one node's folder of node-local storage). Folders without
the marker (a save that never finished) are listed as incomplete: resume ignores them.
Exit status: 0 when every committed checkpoint is intact and there is at least one, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from mage_fast.train.checkpoint import check_files, ckpt_root, incomplete, tags


def verify(run_dir: str) -> list[tuple[str, str | None]]:
    """(tag, first problem or None) for every committed checkpoint of `run_dir`, oldest first."""
    return [(t, check_files(os.path.join(ckpt_root(run_dir), t))) for t in tags(run_dir, committed=True)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mage_fast.train.verify", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a training run_dir (its checkpoints/ folder is checked)")
    args = p.parse_args(argv)
    results = verify(args.run_dir)
    for t in tags(args.run_dir, committed=False):
        print(f"{t}: incomplete (no COMMITTED marker; resume ignores it)")
    for tag, problem in results:
        part = incomplete(os.path.join(ckpt_root(args.run_dir), tag)) if problem is None else None
        print(f"{tag}: {'DAMAGED: ' + problem if problem else 'ok' + (f' ({part})' if part else '')}")
    if not results:
        print(f"no committed checkpoint in {ckpt_root(args.run_dir)}", file=sys.stderr)
    return 0 if results and all(p is None for _, p in results) else 1


if __name__ == "__main__":
    sys.exit(main())
