"""`python -m benchmarks.model`: bytes, FLOPs and predicted time per op, implementation, device."""

from __future__ import annotations

import importlib
import pkgutil

from benchmarks.model.roofline import DEVICES, Row

SKIP = {"roofline", "__main__"}


def op_modules() -> list:
    """Every `benchmarks/model/<op>.py` that defines `rows(dev)`."""
    import benchmarks.model as pkg

    mods = [importlib.import_module(f"benchmarks.model.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]
    return [m for m in mods if m.__name__.rsplit(".", 1)[1] not in SKIP and hasattr(m, "rows")]


def all_rows() -> list[tuple[str, Row]]:
    """(device class, row) for every op module and device class."""
    return [(name, r) for name, dev in DEVICES.items() for m in op_modules() for r in m.rows(dev)]


def main() -> None:
    head = f"{'device':6} {'op':15} {'impl':14} {'phase':10} {'shape':28} {'GB':>8} {'TFLOP':>8} {'ms':>8}  bound"
    print(head)
    for name, r in all_rows():
        t = r.times_ms(DEVICES[name])
        bound = max(t, key=t.get)
        gb, tf = r.bytes / 1e9, (r.tc_flops + r.cuda_flops) / 1e12
        print(f"{name:6} {r.op:15} {r.impl:14} {r.phase:10} {r.shape:28} {gb:8.2f} {tf:8.2f} {max(t.values()):8.3f}  {bound}")


if __name__ == "__main__":
    main()
