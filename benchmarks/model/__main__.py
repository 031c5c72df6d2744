"""`python -m benchmarks.model`: bytes, FLOPs and predicted time per op, implementation, device."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import benchmarks.model as pkg
from benchmarks.model.roofline import DEVICES, Row

SKIP = {"roofline", "__main__"}


def op_modules() -> list:
    """Every `benchmarks/model/<op>.py` that defines `rows(dev)`."""
    mods = [importlib.import_module(f"benchmarks.model.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in mods if m.__name__.rsplit(".", 1)[1] not in SKIP and hasattr(m, "rows")]


def all_rows() -> list[tuple[str, Row]]:
    """(device class, row) for every op module and device class."""
    return [(name, r) for name, dev in DEVICES.items() for m in op_modules() for r in m.rows(dev)]


def step_totals(rows: list[tuple[str, Row]]) -> dict[tuple[str, str, str, str], list[float]]:
    """(device, op, impl, shape) -> [GB, TFLOP, ms] summed over rows whose phase is "step:...":
    kernels that run one after another, so their times add."""
    out: dict[tuple[str, str, str, str], list[float]] = {}
    for name, r in rows:
        if r.phase.startswith("step:"):
            t = out.setdefault((name, r.op, r.impl, r.shape), [0.0, 0.0, 0.0])
            t[0] += r.bytes / 1e9
            t[1] += (r.tc_flops + r.cuda_flops) / 1e12
            t[2] += r.predicted_ms(DEVICES[name])
    return out


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(prog="benchmarks.model", description=__doc__.split("`: ", 1)[1]).parse_args(argv)
    head = f"{'device':6} {'op':15} {'impl':14} {'phase':26} {'shape':28} {'GB':>8} {'TFLOP':>8} {'ms':>8}  bound"
    print(head)
    rows = all_rows()
    for name, r in rows:
        t = r.times_ms(DEVICES[name])
        bound = max(t, key=t.get)
        gb, tf = r.bytes / 1e9, (r.tc_flops + r.cuda_flops) / 1e12
        ms = r.predicted_ms(DEVICES[name])
        print(
            f"{name:6} {r.op:15} {r.impl:14} {r.phase:26} {r.shape:28} {gb:8.2f} {tf:8.2f} {ms:8.3f}  {bound}  {r.note}"
        )
    for (name, op, impl, shape), (gb, tf, ms) in step_totals(rows).items():
        print(f"{name:6} {op:15} {impl:14} {'sum of steps':26} {shape:28} {gb:8.2f} {tf:8.2f} {ms:8.3f}")
    for m in op_modules():
        if hasattr(m, "summary_lines"):
            for name, dev in DEVICES.items():
                print("\n".join(m.summary_lines(name, dev)))


if __name__ == "__main__":
    main()
