"""The pre-emption helpers on their own: the stop flag and the test hook that holds a step."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mage_fast.train.preempt import StopRequest, pause_for_signal


def test_pause_holds_until_a_signal_or_the_limit(monkeypatch) -> None:
    stop = StopRequest(["SIGUSR1"])
    try:
        monkeypatch.setenv("MAGE_FAST_PAUSE_AFTER", "3:0.3")
        t = time.monotonic()
        pause_for_signal(2, stop)  # another step: no wait
        assert time.monotonic() - t < 0.1
        pause_for_signal(3, stop)  # no signal: waits out the limit
        assert 0.25 < time.monotonic() - t < 2.0
        os.kill(os.getpid(), signal.SIGUSR1)
        t = time.monotonic()
        pause_for_signal(3, stop)  # signalled: returns at once
        assert time.monotonic() - t < 0.1 and stop.signal == "SIGUSR1"
    finally:
        stop.restore()


def test_pause_rejects_a_malformed_spec(monkeypatch) -> None:
    monkeypatch.setenv("MAGE_FAST_PAUSE_AFTER", "six")
    with pytest.raises(ValueError, match="STEP or STEP:SECONDS, got 'six'"):
        pause_for_signal(6, StopRequest([]))
