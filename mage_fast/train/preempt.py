"""Pre-emption notices: a signal asks the run to stop after the current step, save and exit.

Schedulers announce a pre-emption with a signal and a grace period (SLURM, Kubernetes and spot
instances send SIGTERM; SLURM's `--signal` sends SIGUSR1 ahead of time). The handler only sets a
flag: the step in flight finishes, the flag joins the step's all-reduce so every rank stops after
the same step, a checkpoint is saved and committed, and the entry point exits with
`EXIT_PREEMPTED`. A second signal while saving only sets the flag again, so it cannot interrupt
the save; a SIGKILL after the grace period leaves a folder without its marker, which resume ignores.
"""

from __future__ import annotations

import signal
import threading
import time

# sysexits.h EX_TEMPFAIL: a temporary failure; the same command again resumes from the checkpoint.
EXIT_PREEMPTED = 75


class StopRequest:
    """Handlers for `names` (e.g. ["SIGTERM", "SIGUSR1"]) that record the first signal's name."""

    def __init__(self, names: list[str]) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a run in a thread keeps the defaults
        for name in names:
            num = getattr(signal, name)
            self._previous[num] = signal.signal(num, self._handle)

    def _handle(self, signum: int, frame) -> None:
        # No printing here: the signal may land inside a print of the main thread.
        if self.signal is None:
            self.signal = signal.Signals(signum).name

    def requested(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        """Put the previous handlers back (the run is over)."""
        for num, handler in self._previous.items():
            signal.signal(num, handler)
        self._previous.clear()


def pause_for_signal(step: int, stop: StopRequest, after: int, wait_s: float) -> None:
    """Fault injection for tests (`faults.pause_after`, `faults.pause_s`): after step `after`
    (0: never) every rank waits until a stop signal reaches it or `wait_s` pass, so a test's signal
    lands between two steps however fast the steps are, never after the last one."""
    if not after or after != step:
        return
    deadline = time.monotonic() + wait_s
    while not stop.requested() and time.monotonic() < deadline:
        time.sleep(0.05)
