"""The pre-emption helpers on their own: the stop flag and the test hook that holds a step."""

from __future__ import annotations

import os
import signal
import time

from mage_fast.train.preempt import StopRequest, pause_for_signal


def test_pause_holds_until_a_signal_or_the_limit() -> None:
    stop = StopRequest(["SIGUSR1"])
    try:
        t = time.monotonic()
        pause_for_signal(2, stop, 3, 0.3)  # another step: no wait
        pause_for_signal(3, stop, 0, 0.3)  # off: no wait
        assert time.monotonic() - t < 0.1
        pause_for_signal(3, stop, 3, 0.3)  # no signal: waits out the limit
        assert 0.25 < time.monotonic() - t < 2.0
        os.kill(os.getpid(), signal.SIGUSR1)
        t = time.monotonic()
        pause_for_signal(3, stop, 3, 0.3)  # signalled: returns at once
        assert time.monotonic() - t < 0.1 and stop.signal == "SIGUSR1"
    finally:
        stop.restore()
