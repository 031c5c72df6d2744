"""Backend tables of the ops: `torch | cpp | triton | cuda`, or `auto`.

Each op module declares one table, a tuple of `Backend` rows (name, implementation, availability,
auto rule), with `register(op, rows)`; the table is validated there (known, unique names; a
`torch` row, the reference twin every device can run; callables; `cpp` and `cuda` sharing one
native implementation, the C++ op whose dispatcher picks the CPU or the CUDA kernel).

The public queries, for the ops and for tools (benchmarks, CI scripts):

* `table(op)`: the op's rows by name;
* `backend_for(op, device, choice="auto")`: the row `op` runs with on `device` for the user's
  `choice`; `resolve` returns its name;
* `available(op, device)`, `unavailable_reason(op, name, device)`.

`auto` on a CPU walks `AUTO_ORDER` and takes the first row that is usable there and whose auto
rule allows the device. On a CUDA device an untested kernel must not become the default path:
`auto` takes the winner that `make gpu-check` measured and validated for the device's class
(`validated.json` beside this file, `{"winners": {op: {device_class: backend}}}`), and `torch`
until such a run exists, saying so once per op and device class in the log.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import torch

BACKENDS: tuple[str, ...] = ("torch", "cpp", "triton", "cuda")
# Preferred first where no measurement decides (CPU): the native twin, then pure torch. The
# Triton interpreter (CPU) is correct but slow: Triton's auto rule is true on CUDA only.
AUTO_ORDER: tuple[str, ...] = ("triton", "cuda", "cpp", "torch")
# Device types on which `auto` follows validated.json instead of AUTO_ORDER.
MEASURED_DEVICE_TYPES: frozenset[str] = frozenset({"cuda"})
VALIDATED_PATH: Path = Path(__file__).with_name("validated.json")

Availability = Callable[[torch.device], "str | None"]
AutoRule = bool | Callable[[torch.device], bool]
log = logging.getLogger("mage_fast.ops")


def always(device: torch.device) -> str | None:
    """Availability of pure-torch code: every device."""
    return None


@dataclass(frozen=True)
class Backend:
    """One row of an op's backend table.

    forward / backward: the implementation (the op module's signature; `backward` None where the
    op's backward does not depend on the backend). availability(device): None when usable, else
    why not. auto: whether `auto` may pick the row on a device (a bool or a predicate).
    opaque_backward: the backward launches kernels and runs as its own custom op, so that AOT
    autograd (torch.compile, opcheck) traces its fake instead of calling launchers on fakes.
    """

    name: str
    forward: Callable
    backward: Callable | None = None
    availability: Availability = always
    auto: AutoRule = True
    opaque_backward: bool = False

    def auto_ok(self, device: torch.device) -> bool:
        """Whether `auto` may pick this row on `device` (when it is also available)."""
        return self.auto(device) if callable(self.auto) else bool(self.auto)


_TABLES: dict[str, Mapping[str, Backend]] = {}


def _check_rows(op: str, rows: Sequence[Backend]) -> None:
    names = [r.name for r in rows]
    for r in rows:
        if not isinstance(r, Backend):
            raise TypeError(f"{op}: table rows must be Backend, got {type(r).__name__}")
        if r.name not in BACKENDS:
            raise ValueError(f"unknown backend {r.name!r} for {op}; known: {', '.join(BACKENDS)}")
        if not callable(r.forward) or not (r.backward is None or callable(r.backward)):
            raise TypeError(f"{op}: backend {r.name!r} needs a callable forward (and backward or None)")
        if not callable(r.availability) or not (isinstance(r.auto, bool) or callable(r.auto)):
            raise TypeError(f"{op}: backend {r.name!r}: availability must be callable, auto a bool or callable")
    if len(set(names)) != len(names):
        raise ValueError(f"{op}: a backend is listed twice: {names}")
    if "torch" not in names:
        raise ValueError(f"{op}: every table has a 'torch' row (the reference every device runs)")
    if len({r.backward is None for r in rows}) > 1:
        raise ValueError(f"{op}: either every backend has its own backward or none has")
    native = [(r.forward, r.backward) for r in rows if r.name in ("cpp", "cuda")]
    if len(set(native)) > 1:
        raise ValueError(f"{op}: 'cpp' and 'cuda' are one native path: give them the same functions")


def register(op: str, rows: Sequence[Backend]) -> Mapping[str, Backend]:
    """Declare `op`'s backend table (validated); returns it as a read-only name -> row mapping."""
    if not isinstance(op, str) or not op:
        raise ValueError(f"op name must be a non-empty str, got {op!r}")
    if op in _TABLES:
        raise ValueError(f"{op}: a backend table is already registered")
    _check_rows(op, rows)
    _TABLES[op] = MappingProxyType({r.name: r for r in rows})
    return _TABLES[op]


def table(op: str) -> Mapping[str, Backend]:
    """`op`'s backend rows by name (read-only)."""
    if op not in _TABLES:
        raise ValueError(f"unknown op {op!r}; registered: {', '.join(sorted(_TABLES))}")
    return _TABLES[op]


def ops() -> tuple[str, ...]:
    """Names of the ops with a registered table."""
    return tuple(sorted(_TABLES))


def unavailable_reason(op: str, name: str, device: torch.device | str) -> str | None:
    """None if `op` implements backend `name` and it runs on `device`, else why not."""
    device = torch.device(device)
    rows = table(op)
    if name not in rows:
        done = ", ".join(b for b in BACKENDS if b in rows)
        return f"backend {name!r} is not implemented for {op}; implemented: {done}"
    return rows[name].availability(device)


def available(op: str, device: torch.device | str) -> list[str]:
    """Backends of `op` usable on `device`, in auto order."""
    device = torch.device(device)
    rows = table(op)
    return [b for b in AUTO_ORDER if b in rows and rows[b].availability(device) is None]


@functools.cache
def device_class(device: torch.device) -> str:
    """The class a measurement holds for: "cpu", or the GPU model ("h100", "a100", else "sm90")."""
    if device.type != "cuda":
        return device.type
    if not torch.cuda.is_available():
        return "cuda-unknown"
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index).lower()
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name.replace("nvidia", ""))
    if m:
        return m.group(1)
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm{major}{minor}"


@functools.lru_cache(maxsize=1)
def validated() -> Mapping[str, Mapping[str, str]]:
    """op -> device class -> backend, as `make gpu-check` wrote it ({} when nothing is validated)."""
    if not VALIDATED_PATH.exists():
        return {}
    data = json.loads(VALIDATED_PATH.read_text())
    return data.get("winners", {})


_SAID: set[tuple[str, str]] = set()


def _measured_auto(op: str, rows: Mapping[str, Backend], device: torch.device) -> Backend:
    cls = device_class(device)
    name = validated().get(op, {}).get(cls)
    if name in rows and rows[name].availability(device) is None:
        return rows[name]
    if (op, cls) not in _SAID:
        _SAID.add((op, cls))
        why = f"validated winner {name!r} is unavailable" if name else "no backend is validated"
        log.warning("%s: auto picks 'torch' on %s (%s): %s there; run `make gpu-check`", op, device, cls, why)
    return rows["torch"]


def backend_for(op: str, device: torch.device | str, choice: str = "auto") -> Backend:
    """The row `op` runs with on `device` for the user's `choice` (auto or a backend name)."""
    device = torch.device(device)
    rows = table(op)
    if choice == "auto":
        if device.type in MEASURED_DEVICE_TYPES:
            return _measured_auto(op, rows, device)
        for b in AUTO_ORDER:
            if b in rows and rows[b].auto_ok(device) and rows[b].availability(device) is None:
                return rows[b]
        raise ValueError(f"{op}: no backend is available on device {device}")
    if choice not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {choice!r}; choose auto or one of {', '.join(BACKENDS)}")
    why = unavailable_reason(op, choice, device)
    if why is not None:
        if choice not in rows:
            raise ValueError(f"{op}: {why} (device {device})")
        raise ValueError(f"{op}: backend {choice!r} is unavailable on device {device}: {why}")
    return rows[choice]


def resolve(op: str, choice: str, device: torch.device | str) -> str:
    """Name of the backend `op` runs with on `device` for the user's `choice`."""
    return backend_for(op, device, choice).name
