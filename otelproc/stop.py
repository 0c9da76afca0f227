"""A clean stop on SIGINT or SIGTERM: the handler only sets a flag the main loop reads."""

from __future__ import annotations

import signal


class StopSignal:
    def __init__(self) -> None:
        self.signum: int | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None
