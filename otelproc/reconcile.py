"""The /proc sweep: what the kernel side lost, found again.

A record lost in a full ring buffer leaves the tracker wrong in one of two ways:
- an exit was lost: the tracker holds a process that is gone. The sweep ends
  its span at the sweep's time, flagged otelproc.end.approximate.
- an exec or fork was lost: the kernel tracks a process the tracker does not
  know. The sweep adopts it from /proc. When the kernel's tracked map was full,
  the process is not even there, so a full adoption scan runs instead.
A suspect is acted on only when two sweeps in a row agree, so a record still
on its way through the ring buffer is never mistaken for a lost one.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from otelproc import adoption
from otelproc.adoption import alive
from otelproc.clock import BootClock
from otelproc.loader import Probe
from otelproc.telemetry import Stats
from otelproc.tracker import Ended, ProcessKey, Tracker

log = logging.getLogger("otelproc")


class Reconciler:
    def __init__(
        self,
        tracker: Tracker,
        probe: Probe,
        clock: BootClock,
        stats: Stats,
        adopt: Callable[[], int],
        cgroup_mount: str | None,
        adoption_stats: adoption.AdoptionStats,
    ) -> None:
        self.tracker = tracker
        self.probe = probe
        self.clock = clock
        self.stats = stats
        self.adopt = adopt  # a full adoption scan of /proc; returns how many it added
        self.cgroup_mount = cgroup_mount
        self.adoption = adoption_stats
        self._gone: set[ProcessKey] = set()
        self._unknown: set[tuple[int, int]] = set()
        self._map_full_seen = 0

    def sweep(self) -> list[Ended]:
        """Ends of processes found gone; adopts processes found unknown. Returns the ends to export."""
        now = time.time_ns()
        ended = []
        gone = {key for key, p in self.tracker.processes.items() if not alive(p.pid, p.identity.start_ticks)}
        for key in gone & self._gone:
            process = self.tracker.forget(key)
            if process is not None:
                self.stats.reconciled["exit_missed"] += 1
                ended.append(Ended.unseen(process, now))
        self._gone = gone - self._gone

        known = {p.pid for p in self.tracker.processes.values()}
        unknown = {(pid, ticks) for pid, ticks in self.probe.tracked().items() if pid not in known}
        for pid, ticks in unknown & self._unknown:
            self._adopt_one(pid, ticks)
        self._unknown = unknown - self._unknown

        map_full = self.stats.drops["tracked_map_full"]
        if map_full > self._map_full_seen:
            self._map_full_seen = map_full
            self.stats.reconciled["exec_missed"] += self.adopt()
        if ended:
            log.info("sweep: %d exits the kernel side lost, spans ended now (approximate)", len(ended))
        return ended

    def _adopt_one(self, pid: int, ticks: int) -> None:
        if not alive(pid, ticks):
            self.probe.untrack(pid)  # gone, and its exit record with it
            return
        event = adoption.snapshot_or_none(pid, self.clock, self.cgroup_mount, self.adoption)
        if event is not None and event.start_ticks == ticks:
            self.tracker.handle(event)
            self.stats.reconciled["exec_missed"] += 1
