"""A clean stop on SIGINT or SIGTERM: the handler only records the signal, the main loop reads it.

Which signal it was matters: SIGINT is a person at a terminal (Ctrl-C), SIGTERM a
service manager (systemd, Kubernetes, compose) that will start otelproc again.
A second signal during the stop asks it to end at once.
"""

from __future__ import annotations

import signal
import time


class StopSignal:
    def __init__(self) -> None:
        self.signum: int | None = None  # the first stop signal
        self.at: float | None = None  # time.monotonic() when it came
        self.again = False  # a second one came: end the stop at once
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
        else:
            self.again = True

    @property
    def interactive(self) -> bool:
        """Ctrl-C at a terminal, not a service manager's stop."""
        return self.signum == signal.SIGINT

    def begin(self) -> float:
        """When the stop began (time.monotonic()): at the signal, else now (--duration, an error)."""
        if self.at is None:
            self.at = time.monotonic()
        return self.at

    def left_ms(self, timeout: float) -> float:
        """What is left of a stop that may take timeout seconds: nothing once a second signal came."""
        if self.again:
            return 0.0
        return max(0.0, self.begin() + timeout - time.monotonic()) * 1000

    @property
    def cause(self) -> str:
        return "at the end of --duration" if self.signum is None else f"on {signal.Signals(self.signum).name}"

    def __bool__(self) -> bool:
        return self.signum is not None
