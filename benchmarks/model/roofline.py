"""Device classes and the row type of the traffic/FLOP model (`python -m benchmarks.model`).

Each op has a module `benchmarks/model/<op>.py` with `rows(dev: Device) -> list[Row]`: one row
per implementation and phase at the real shapes, with the bytes it moves through HBM and the
FLOPs it executes (tensor-core and CUDA-core FLOPs apart), derived from the op's own planner so
that a change to the planner changes the prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

from mage_fast.ops.ce_mse_plan import GPU_RATES, GPU_SMS


@dataclass(frozen=True)
class Device:
    """Peak rates of one device class (dense, no sparsity)."""

    name: str
    tc_tflops_bf16: float  # tensor-core bf16/fp16 TFLOP/s
    cuda_tflops_fp32: float  # CUDA-core fp32 FMA TFLOP/s (non-tensor)
    sfu_tops: float  # special-function (exp, erf, rsqrt) T-ops/s
    hbm_tbps: float  # HBM TB/s
    smem_kb: int  # max shared memory per block, KB
    sms: int


def _device(name: str) -> Device:
    """H100 / H200 SXM: the tensor-core and HBM rates and the SM count are the ce_mse planner's
    (one home: mage_fast/ops/ce_mse_plan.py); the CUDA-core, SFU and shared-memory figures are the
    devices' data-sheet ones, the same on both."""
    tc, hbm = GPU_RATES[name]
    return Device(name, tc / 1e12, 60.0, 3.9, hbm / 1e12, 227, GPU_SMS)


DEVICES: dict[str, Device] = {name: _device(name) for name in ("h100", "h200")}


@dataclass
class Row:
    """One implementation/phase of one op at one shape on one device class."""

    op: str
    impl: str
    phase: str  # forward | backward | full | a named sub-step such as "dW2"
    shape: str
    bytes: float
    tc_flops: float = 0.0  # tensor-core FLOPs
    cuda_flops: float = 0.0  # CUDA-core FLOPs (elementwise, reductions)
    sfu_ops: float = 0.0  # transcendental ops (exp, erf)
    note: str = ""
    tc_eff: float = 1.0  # fraction of the SMs' tensor-core time doing work (wave quantisation)
    serial_bytes: float = 0.0  # bytes moved after the tensor-core work, not overlapped with it

    def times_ms(self, dev: Device) -> dict[str, float]:
        """Lower-bound time of each resource, in ms: memory, tensor cores, CUDA cores, SFU."""
        return {
            "mem": self.bytes / (dev.hbm_tbps * 1e12) * 1e3,
            "tc": self.tc_flops / self.tc_eff / (dev.tc_tflops_bf16 * 1e12) * 1e3,
            "cuda": self.cuda_flops / (dev.cuda_tflops_fp32 * 1e12) * 1e3,
            "sfu": self.sfu_ops / (dev.sfu_tops * 1e12) * 1e3,
        }

    def serial_ms(self, dev: Device) -> float:
        """Time of the unhidden epilogue traffic, added after the overlapped resources."""
        return self.serial_bytes / (dev.hbm_tbps * 1e12) * 1e3

    def predicted_ms(self, dev: Device) -> float:
        """Roofline prediction: the slowest resource bounds the phase; unhidden epilogues add."""
        return max(self.times_ms(dev).values()) + self.serial_ms(dev)
