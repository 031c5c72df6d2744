"""Entry point:

deepspeed --num_gpus N --module mage_fast.train --config configs/train/X.yaml [key=value ...]
python -m mage_fast.train --config configs/train/X.yaml [key=value ...]     (one process)

Exit status: 0 done; 1 a config, data, resume or non-finite error (one line); 75 stopped by one of
`stop_signals` after committing a checkpoint of the last step (run the same command to resume).
"""

from __future__ import annotations

import argparse
import sys

from mage_fast.configtools import ConfigError, load_config
from mage_fast.train.config import TrainConfig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="mage_fast.train", description="Train a MAGE model with DeepSpeed.")
    p.add_argument("--config", help="a YAML instance of TrainConfig (configs/train/*.yaml)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=3e-4 max_steps=100")
    args = p.parse_args(argv)
    from mage_fast.data.llava import DataError
    from mage_fast.train.checkpoint import ResumeError
    from mage_fast.train.dist import shutdown
    from mage_fast.train.loop import NonFiniteError, check_paths, train
    from mage_fast.train.preempt import EXIT_PREEMPTED

    try:
        cfg = load_config(TrainConfig, args.config, args.overrides)
        check_paths(cfg)  # every file and folder named by the config exists
    except (ConfigError, OSError) as e:
        sys.exit(f"config error: {e}")

    try:
        summary = train(cfg)
    except (ConfigError, DataError, ResumeError, NonFiniteError) as e:
        # One clear line per rank instead of a traceback; the launcher then stops the others.
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    shutdown()
    if summary["preempted"]:
        sys.exit(EXIT_PREEMPTED)  # a checkpoint of the last step is committed: run again to resume


if __name__ == "__main__":
    main()
