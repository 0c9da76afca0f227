"""Kernel timestamps (CLOCK_BOOTTIME) to wall-clock nanoseconds.

The offset between the two clocks moves when the wall clock is stepped (NTP,
an operator) and slowly with slewing, so it is sampled again every few seconds
rather than once at start-up.
"""

from __future__ import annotations

import time
from functools import lru_cache

REFRESH_NS = 2_000_000_000


def _sample_offset() -> int:
    """realtime - boottime, from the tightest of a few back-to-back readings."""
    best_width, best = None, 0
    for _ in range(3):
        before = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall = time.time_ns()
        after = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if best_width is None or after - before < best_width:
            best_width, best = after - before, wall - (before + after) // 2
    return best


class BootClock:
    """Converts boot-time nanoseconds to Unix-epoch nanoseconds."""

    def __init__(self) -> None:
        self.offset_ns = _sample_offset()
        self._next_refresh = time.monotonic_ns() + REFRESH_NS

    def refresh(self) -> None:
        """Resample the offset when it is due; cheap enough to call on every poll."""
        now = time.monotonic_ns()
        if now >= self._next_refresh:
            self.offset_ns = _sample_offset()
            self._next_refresh = now + REFRESH_NS

    def to_wall(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

    def boot_now(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


@lru_cache(maxsize=64)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def rfc3339(wall_ns: int) -> str:
    """2026-11-25T12:30:02.123456789Z"""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return f"{_utc_second(seconds)}.{nanos:09d}Z"


def iso_millis(wall_ns: int) -> str:
    """2026-11-25T12:30:02.123Z, as the semantic conventions show process.creation.time."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return f"{_utc_second(seconds)}.{nanos // 1_000_000:03d}Z"
