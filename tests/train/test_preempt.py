"""The pre-emption helpers on their own: the stop flag and the test hook that holds a step."""

from __future__ import annotations

import os
import signal

import pytest

from mage_fast.train import preempt
from mage_fast.train.preempt import StopRequest, pause_for_signal


class FakeClock:
    """Stands in for preempt's `time`: sleeping advances the clock, so waits are counted, not timed."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps += 1
        self.now += s


def test_pause_holds_until_a_signal_or_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(preempt, "time", clock)
    stop = StopRequest(["SIGUSR1"])
    try:
        pause_for_signal(2, stop, 3, 0.3)  # another step: no wait
        pause_for_signal(3, stop, 0, 0.3)  # off: no wait
        assert clock.sleeps == 0
        pause_for_signal(3, stop, 3, 0.3)  # no signal: waits out the limit
        assert clock.now >= 0.3 and clock.sleeps == pytest.approx(0.3 / 0.05, abs=1)
        os.kill(os.getpid(), signal.SIGUSR1)
        before = clock.sleeps
        pause_for_signal(3, stop, 3, 0.3)  # signalled: returns at once
        assert clock.sleeps == before and stop.signal == "SIGUSR1"
    finally:
        stop.restore()
