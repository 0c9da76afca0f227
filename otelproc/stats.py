"""otelproc's own counts (what it saw, sent and dropped) and the bounded log of what went wrong.

Every stage adds to plain integers here; otel/telemetry.py publishes them as
OTLP metrics, and the stop line sums them up.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from otelproc.errors import describe
from otelproc.plural import count

log = logging.getLogger("otelproc")


@dataclass
class Stats:
    events: Counter[str] = field(default_factory=Counter)  # by kind
    spans: Counter[str] = field(default_factory=Counter)  # handed to the exporter, by otelproc.span
    exported: int = 0  # spans the collector accepted
    kept: int = 0  # spans a stop did not deliver in time, kept for the next start (see unsent.py)
    export_failures: int = 0  # export calls that failed after the SDK's retries
    drops: Counter[str] = field(default_factory=Counter)  # by reason; see docs/operations.md, "What otelproc drops"
    reconciled: Counter[str] = field(default_factory=Counter)  # ends and starts found by /proc sweeps
    malformed: Counter[str] = field(default_factory=Counter)  # bad input from traced processes, ignored
    failures: Counter[str] = field(default_factory=Counter)  # by stage: work that raised and was skipped
    ring_away_max_ns: int = 0  # longest time the reader spent between two reads of the ring buffer

    def in_flight(self) -> int:
        return (
            sum(self.spans.values())
            - self.exported
            - self.kept
            - self.drops["export_failed"]
            - self.drops["span_invalid"]
        )

    def summary(self) -> str:
        drops = ", ".join(f"{k}={v}" for k, v in sorted(self.drops.items()) if v) or "none"
        return (
            f"{count(sum(self.events.values()), 'event')}, {count(sum(self.spans.values()), 'span')}, "
            f"{self.exported} exported, "
            f"dropped: {drops}"
        )

    def failures_summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items()) if v) or "none"


class ThrottledLog:
    """A warning per topic at most every interval_ns, with how many were held back meanwhile:
    a fault that repeats per event must not flood the log."""

    def __init__(self, interval_ns: int = 5_000_000_000) -> None:
        self.interval_ns = interval_ns
        self._next: dict[str, int] = {}
        self._held: Counter[str] = Counter()

    def warning(self, topic: str, message: str, *args: object) -> None:
        now = time.monotonic_ns()
        if now < self._next.get(topic, 0):
            self._held[topic] += 1
            return
        self._next[topic] = now + self.interval_ns
        held = self._held.pop(topic, 0)
        log.warning(message + (f" (and {held} more like it)" if held else ""), *args)


class StageFailures:
    """Counts a failure of one stage of the event path (decode, track, build, export, sweep, adopt,
    state file) by stage and logs it at a bounded rate: the caller skips that piece of work and goes on.
    Each part of the sidecar is given this, and calls it as failed(stage, exc)."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.throttled = ThrottledLog()

    def __call__(self, stage: str, exc: BaseException) -> None:
        self.stats.failures[stage] += 1
        self.throttled.warning(
            stage, "%s failed: %s; skipped, %d so far", stage, describe(exc), self.stats.failures[stage]
        )
