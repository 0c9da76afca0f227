"""The /proc sweep: what the kernel side lost, found again, off the ring-buffer thread.

A record lost in a full ring buffer leaves the tracker wrong in one of two ways:
- an exit was lost: the tracker holds a process that is gone. The sweep ends
  its span at the sweep's time, flagged otelproc.end.approximate.
- an exec or fork was lost: the kernel tracks a process the tracker does not
  know. The sweep adopts it from /proc.
A process the kernel's tracked map refused (it was full) is tracked once there
is room: after a refusal, every sweep that finds room scans /proc and puts each
matching process the kernel does not track into its map, until none is refused.
A suspect is acted on only when two sweeps in a row agree, so a record still
on its way through the ring buffer is never mistaken for a lost one.

The sweep reads /proc for every tracked process and walks the kernel's map:
work that grows with the host. It runs on a thread of its own (Sweeper) and
hands what it found (Findings) to the ring-buffer thread, which alone changes
the tracker, a bounded amount per turn between two reads of the ring buffer.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from otelproc.sidecar import adoption
from otelproc.sidecar.adoption import alive
from otelproc.model import ProcessEvent
from otelproc.plural import count
from otelproc.kernel.probe import Probe
from otelproc.stats import Stats
from otelproc.sidecar.tracker import Ended, ProcessKey, Tracker

log = logging.getLogger("otelproc")


@dataclass
class Findings:
    gone: list[ProcessKey] = field(default_factory=list)  # exits the kernel side lost
    # 'adopt' events of processes the table lacks, parents before children (as the tracker needs them)
    found: collections.deque[ProcessEvent] = field(default_factory=collections.deque)


class Reconciler:
    """Looks (on any thread; reads the tracker, never changes it) and applies (on the ring-buffer thread)."""

    def __init__(
        self,
        tracker: Tracker,
        probe: Probe,
        stats: Stats,
        snapshot: Callable[[int], ProcessEvent | None],
        scan: Callable[[Callable[[int, int], bool]], Iterable[ProcessEvent]],
        failed: Callable[[str, BaseException], None],
    ) -> None:
        self.tracker = tracker
        self.probe = probe
        self.stats = stats
        self.snapshot = snapshot  # one pid from /proc as an 'adopt' event, None if it vanished
        self.scan = scan  # every process /proc shows that the kernel side would track, but those it skips
        self.failed = failed  # counts a failure by stage
        self._gone: set[ProcessKey] = set()
        self._unknown: set[tuple[int, int]] = set()
        self._map_full_seen = 0
        self._refused = False  # a process the map refused may still be running untracked

    def look(self) -> Findings:
        """What the kernel side lost since the last look."""
        findings = Findings()
        known = list(self.tracker.processes)  # one copy: the ring-buffer thread goes on changing the table
        gone = {key for key in known if not alive(*key)}
        findings.gone = sorted(gone & self._gone)
        self._gone = gone - self._gone

        kernel = self.probe.tracked()
        known_pids = {pid for pid, _ticks in known}
        unknown = {(pid, ticks) for pid, ticks in kernel.items() if pid not in known_pids}
        for pid, ticks in sorted(unknown & self._unknown, key=lambda k: k[1]):  # parents first
            event = self._lost_start(pid, ticks)
            if event is not None:
                findings.found.append(event)
        self._unknown = unknown - self._unknown

        map_full = self.stats.drops["tracked_map_full"]
        if map_full > self._map_full_seen:
            self._map_full_seen = map_full
            self._refused = True
        if self._refused and len(kernel) < self.probe.config.max_tracked:
            findings.found.extend(self._track_refused(kernel, set(known)))
        return findings

    def _lost_start(self, pid: int, ticks: int) -> ProcessEvent | None:
        if not alive(pid, ticks):
            self.probe.untrack(pid)  # gone, and its exit record with it
            return None
        event = self.snapshot(pid)
        return event if event is not None and event.start_ticks == ticks else None

    def _track_refused(self, kernel: dict[int, int], known: set[ProcessKey]) -> list[ProcessEvent]:
        """Puts every process the kernel side should track, and does not, into its map; 'adopt'
        events for those the table lacks too."""
        found, refused = [], 0
        for event in self.scan(lambda pid, ticks: kernel.get(pid) == ticks):
            if not adoption.running_now(event.pid, event.start_ticks):
                continue
            if not self.probe.track(event.pid, event.start_ticks):
                refused += 1
            if (event.pid, event.start_ticks) not in known:
                found.append(event)
        self._refused = refused > 0
        if found or not self._refused:
            log.info(
                "sweep: tracked map had room; %s found untracked, %d still refused",
                count(len(found), "process"),
                refused,
            )
        return found

    def apply(self, findings: Findings, deadline_ns: int) -> list[Ended]:
        """Changes the tracker; returns the ends to export. On the ring-buffer thread, right after a
        poll, until deadline_ns (monotonic): what is left stays in findings for the next turn."""
        now = time.time_ns()
        ended = []
        while findings.gone and time.monotonic_ns() < deadline_ns:
            process = self.tracker.forget(findings.gone.pop())
            if process is not None:  # its exit record may have come meanwhile
                self.stats.reconciled["exit_missed"] += 1
                ended.append(Ended.unseen(process, now))
        while findings.found and time.monotonic_ns() < deadline_ns:
            event = findings.found.popleft()
            # A process that ended since it was read has had its exit record read, or will have:
            # adopting it now would give it a second span.
            if (event.pid, event.start_ticks) in self.tracker.processes or not adoption.running_now(
                event.pid, event.start_ticks
            ):
                continue
            try:
                self.tracker.handle(event)
            except Exception as exc:  # noqa: BLE001 -- one process must not cost the rest of what was found
                self.failed("adopt", exc)
                continue
            self.stats.reconciled["exec_missed"] += 1
        if ended:
            log.info("sweep: %s the kernel side lost, spans ended now (approximate)", count(len(ended), "exit"))
        return ended


class Sweeper:
    """Runs Reconciler.look every interval, on its own thread (the state file has one of its
    own: state.Writer). A failure is counted by stage and the next sweep comes all the same."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval: float,
        failed: Callable[[str, BaseException], None],
    ) -> None:
        self.reconciler = reconciler
        self.interval = interval
        self.failed = failed
        self.findings: queue.SimpleQueue[Findings] = queue.SimpleQueue()
        self._applying: Findings | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otelproc-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.findings.put(self.reconciler.look())
            except Exception as exc:  # noqa: BLE001 -- one bad sweep must not end the sweeps
                self.failed("sweep", exc)

    def ready(self) -> Findings | None:
        """What the sweeps found and the ring-buffer thread has not yet applied, oldest first."""
        while self._applying is None or not (self._applying.gone or self._applying.found):
            try:
                self._applying = self.findings.get_nowait()
            except queue.Empty:
                self._applying = None
                return None
        return self._applying

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
