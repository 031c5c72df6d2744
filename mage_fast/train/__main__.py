"""Entry point:

deepspeed --num_gpus N --module mage_fast.train --config configs/train/X.yaml [key=value ...]
python -m mage_fast.train --config configs/train/X.yaml [key=value ...]     (one process)

Exit status: 0 done; 1 a config, data, resume or non-finite error (one line); 75 stopped by one of
`stop_signals` after committing a checkpoint of the last step (run the same command to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

from mage_fast.configtools import ConfigError, load_config
from mage_fast.train.config import TrainConfig, check_paths


def main(argv: list[str] | None = None) -> int:
    """Train; -> 0 done or EXIT_PREEMPTED. Errors exit here with status 1 and one line."""
    p = argparse.ArgumentParser(prog="mage_fast.train", description="Train a MAGE model with DeepSpeed.")
    p.add_argument("--config", help="a YAML instance of TrainConfig (configs/train/*.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 max_steps=100")
    args = p.parse_args(argv)
    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        check_paths(cfg)  # every file and folder named by the config exists
    except (ConfigError, OSError) as e:
        sys.exit(f"config error: {e}")
    # After the config is read: a bad key fails in a second, before DeepSpeed and transformers load.
    from mage_fast.data.llava import DataError
    from mage_fast.train.checkpoint import ResumeError
    from mage_fast.train.dist import shutdown
    from mage_fast.train.loop import NonFiniteError, train
    from mage_fast.train.preempt import EXIT_PREEMPTED

    try:
        summary = train(cfg)
    except (ConfigError, DataError, ResumeError, NonFiniteError) as e:
        # One clear line per rank instead of a traceback; the launcher then stops the others.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    shutdown()
    # EXIT_PREEMPTED: a checkpoint of the last step is committed; run again to resume.
    return EXIT_PREEMPTED if summary["preempted"] else 0


def exit_without_teardown(code: int) -> None:
    """Leave once everything is committed, skipping the interpreter's teardown: there a launched
    rank has aborted ("terminate called without an active exception", status -6 / 250) after
    its run had finished and been saved, even with the process group destroyed first (2 of ~160
    launches in four test suites on a 2-core CPU machine). Nothing is left to write then; the
    outputs are flushed here."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_without_teardown(main())
