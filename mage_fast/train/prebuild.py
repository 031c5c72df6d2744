"""Build DeepSpeed's JIT ops that CPU training loads, once, at install time:

    python -m mage_fast.train.prebuild

On the CPU accelerator every rank loads DeepSpeed's shared-memory all-reduce op when the process
group starts, and ZeRO-Offload loads its CPU Adam; each is compiled (~25 s and ~40 s on 2 cores)
into torch's extension cache (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR) the first time,
and again whenever the venv moves. Building them here keeps that out of the first launch, where two
ranks would otherwise wait on the same build. On other accelerators there is nothing to do. A
build that fails is reported and left to DeepSpeed's own JIT at the first launch (exit status 0).
`make install` builds the all-reduce op only: every run loads it, while CPU Adam (more than half
of the build time) only ZeRO-Offload loads; `make test` builds both before its launches.
"""

from __future__ import annotations

import argparse
import time

# The DeepSpeed op builders a CPU run loads: at process-group start, and for offload_optimizer.
CPU_OPS = ("ShareMemCommBuilder", "CPUAdamBuilder")


def prebuild(names: tuple[str, ...] = CPU_OPS) -> dict[str, str]:
    """Load (building if needed) each op; -> name -> "ready in N s" or why not."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        return {n: f"not needed on accelerator {acc.device_name()!r}" for n in names}
    done = {}
    for name in names:
        builder = acc.create_op_builder(name)
        if builder is None or not builder.is_compatible(verbose=False):
            done[name] = "not compatible with this machine (DeepSpeed skips it too)"
            continue
        start = time.time()
        try:
            builder.load(verbose=False)
        except Exception as e:  # a compiler problem: DeepSpeed retries at the first launch
            done[name] = f"build failed ({type(e).__name__}: {e}); DeepSpeed will try again when a run loads it"
            continue
        done[name] = f"ready in {time.time() - start:.1f} s"
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mage_fast.train.prebuild", description=__doc__.splitlines()[0].rstrip(":"))
    p.add_argument(
        "--ops", nargs="+", choices=CPU_OPS, default=list(CPU_OPS), help="the builders to load (default: all)"
    )
    a = p.parse_args(argv)
    for name, what in prebuild(tuple(a.ops)).items():
        print(f"deepspeed {name}: {what}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
