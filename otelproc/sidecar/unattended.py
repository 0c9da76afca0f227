"""What a pinned probe did while nobody read it, said in one line at the next start.

The reader stamps the probe's reader map at every read; a probe unread for
longer than --unattended-limit (otelproc stopped and not started again) records
no new lifetime, only counts it (lost reason "unattended"), so that one left
behind costs a bounded ring and each exec no more than an unmatched one does.
"""

from __future__ import annotations

from dataclasses import dataclass

from otelproc.kernel.probe import LastRead
from otelproc.kernel.record import LOST_NAMES, LOST_UNATTENDED

MISSED = LOST_NAMES[LOST_UNATTENDED]


def duration(ns: int) -> str:
    """A span of time as a person reads it: 4.2s, 16m05s, 2h03m, 3d04h."""
    seconds = ns / 1e9
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, s = divmod(round(seconds), 60)
    if not minutes:
        return f"{s}s"
    hours, m = divmod(minutes, 60)
    if not hours:
        return f"{m}m{s:02d}s" if s else f"{m}m"
    days, h = divmod(hours, 24)
    if not days:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    return f"{days}d{h:02d}h" if h else f"{days}d"


@dataclass(frozen=True)
class Unattended:
    away_ns: int  # from the last read to this otelproc's first
    limit_ns: int  # the probe's limit then; 0: none
    kept: int  # lifetimes begun in what it recorded meanwhile
    missed: int  # new lifetimes it did not record, past the limit

    def __str__(self) -> str:
        lifetimes = "lifetime" if self.kept == 1 else "lifetimes"
        said = f"the probe ran unattended for {duration(self.away_ns)}: kept {self.kept:,} {lifetimes}"
        if not self.limit_ns:
            return said + " (no limit set)"
        missed = f"{self.missed:,}" if self.missed else "none"
        return f"{said}, missed {missed} after the {duration(self.limit_ns)} limit"


def figures(
    last_read: LastRead | None, kept: int, lost_then: dict[str, int], lost_before: dict[str, int]
) -> Unattended | None:
    """From the reader map as found, the lifetimes the drain began, and the lost counters as found
    and as the previous otelproc last saw them (its state file); None for a probe too old to say."""
    if last_read is None:
        return None
    missed = max(0, lost_then.get(MISSED, 0) - lost_before.get(MISSED, 0))
    return Unattended(max(0, last_read.checked_ns - last_read.last_read_ns), last_read.limit_ns, kept, missed)
