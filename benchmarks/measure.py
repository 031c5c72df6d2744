"""The child side of benchmarks/harness.py: measure one provider's shapes and modes, print rows.

Modes (inputs that need a gradient require it, as in training):
  forward   the forward call, output dropped;
  backward  `out.backward(grad)` on a graph that an untimed `before` builds afresh for each call;
  full      forward + backward.
Each (provider, shape, mode): one warm-up call (timed as `first_ms`, includes torch.compile),
one call under the memory probe (also a timing sample), then timed calls (see common.time_call).
For `backward` the memory figure is the backward's own peak beyond the live graph.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks import common
from benchmarks.common import ROW_TAG
from benchmarks.opbench import Inputs, OpBench, Provider, shape_label


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    return [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]


@dataclass
class ModeCall:
    """What is timed for a mode: `fn()`, after `before()` (untimed) has prepared it."""

    fn: Callable[[], object]
    before: Callable[[], None]


def mode_call(call: Callable[[Inputs], torch.Tensor], inputs: Inputs, mode: str) -> ModeCall:
    """forward: the call; backward: `out.backward(grad)` on a graph that `before` builds afresh
    (no retain_graph: compiled graphs donate their buffers); full: call + backward.
    `before` also resets the leaves' grads, so no call accumulates into a previous one's."""
    leaves = _leaves(inputs)
    state: dict[str, torch.Tensor] = {}

    def grad_for(out: torch.Tensor) -> torch.Tensor | None:
        if out.dim() == 0:
            return None
        if "g" not in state:
            state["g"] = torch.randn_like(out)
        return state["g"]

    def reset() -> None:
        for t in leaves:
            t.grad = None

    if mode == "forward":
        return ModeCall(lambda: call(inputs), reset)
    if mode == "backward":

        def build() -> None:
            reset()
            state.pop("out", None)
            state["out"] = call(inputs)

        def backward() -> None:
            out = state.pop("out")
            out.backward(grad_for(out))

        return ModeCall(backward, build)

    def full() -> None:
        out = call(inputs)
        out.backward(grad_for(out))

    return ModeCall(full, reset)


def measure(
    bench: OpBench,
    provider: Provider,
    shape: dict,
    mode: str,
    dtype: torch.dtype,
    device: torch.device,
    budget_s: float,
) -> dict:
    """One row's measurements (no roofline percentages: the parent adds those)."""
    torch.manual_seed(0)
    inputs = bench.make_inputs(shape, dtype, device)
    m = mode_call(provider.make(shape), inputs, mode)
    light = (bool(shape.get("light")) or provider.light_on_cpu) and device.type == "cpu"
    first = None
    if not light or provider.needs_warmup:
        m.before()
        first = common.timed(m.fn, device)
    m.before()
    mem, ms = common.peak_extra_memory(m.fn, device)
    if light:
        t = common.summarize([ms])
    else:
        t = common.time_call(
            m.fn, device, before=m.before, budget_s=budget_s, seed_ms=[ms], cuda_setup=mode == "backward"
        )
    row = {
        "ms_median": round(t.median, 4),
        "ms_p20": round(t.p20, 4),
        "ms_p80": round(t.p80, 4),
        "reps": t.reps,
        "first_ms": "" if first is None else round(first, 2),
        "peak_mem_mb": common.fmt_mb(mem),
        "mem_method": common.memory_method(device),
        "status": "ok",
    }
    if provider.grad_in_forward and mode != "full":
        row["note"] = "computes gradients in forward: compare full"
    return row


def run_child(
    bench: OpBench,
    providers: list[str],
    shapes: list[dict],
    modes: list[str],
    dtype: str,
    device: torch.device,
    budget_s: float,
) -> None:
    """Measure and print one ROW_TAG json line per (provider, shape, mode)."""
    table = {p.name: p for p in bench.providers}
    for pname in providers:
        for shape in shapes:
            for mode in [m for m in modes if m in shape.get("modes", common.MODES)]:
                base = {"op": bench.op, "provider": pname, "mode": mode, "shape": shape_label(shape), "dtype": dtype}
                t0 = time.time()
                try:
                    row = measure(bench, table[pname], shape, mode, common.dtype_of(dtype), device, budget_s)
                except Exception as e:  # noqa: BLE001  (an OOM or a broken provider is a result too)
                    traceback.print_exc(file=sys.stderr)
                    row = {"status": "error", "note": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(ROW_TAG + json.dumps({**base, **row}), flush=True)
                print(
                    f"  {pname:>12} {mode:>8} {base['shape']:<28} {row.get('ms_median', '-'):>10} ms  "
                    f"{row.get('peak_mem_mb', '-'):>9} MB  ({time.time() - t0:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
