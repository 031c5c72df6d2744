"""A backend this machine should test must not be skipped silently (e.g. TRITON_INTERPRET=0 set,
or mage_fast._C not built): the op tests would pass with a whole backend missing."""

from __future__ import annotations

import pytest
from opsutil import backend_skip_reason, expected_backends

from mage_fast.ops import _backend


@pytest.mark.parametrize("backend", sorted(expected_backends()))
def test_expected_backend_runs(backend: str) -> None:
    why = backend_skip_reason(backend)
    assert why is None, (
        f"backend {backend!r} is expected on this machine ({expected_backends()[backend]}) but its op tests "
        f"would be skipped: {why}. Fix the setup, or set MAGE_FAST_TEST_SKIP={backend} to skip it on purpose."
    )
    for op in _backend.ops():
        assert backend in _backend.table(op), f"{op} has no {backend!r} row"
