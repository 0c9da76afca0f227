"""`otelproc run`: the probe, the tracker and the span exporter in one loop.

One thread polls the ring buffer and does all the tracking; the SDK's batch
processor exports on its own thread. Signals only set a flag the loop reads.
"""

from __future__ import annotations

import logging
import os
import time

from otelproc import adoption
from otelproc.cgroups import CgroupPaths
from otelproc.checks import RUN_CAPS, require_caps
from otelproc.clock import BootClock
from otelproc.config import Settings, describe_tracking, probe_config
from otelproc.decoder import decode
from otelproc.export import make_destination, make_processor
from otelproc.loader import Probe
from otelproc.stop import StopSignal
from otelproc.spans import SpanBuilder, host_attributes
from otelproc.tracker import Ended, Tracker

log = logging.getLogger("otelproc")

POLL_MS = 100
LOST_CHECK_NS = 5_000_000_000


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = BootClock()
        self.destination = make_destination(settings)
        self.processor = make_processor(self.destination.exporter)
        self.builder = SpanBuilder(settings.service_name, host_attributes())
        self.tracker = Tracker(settings.max_processes, int(settings.start_span_delay * 1e9))
        self.cgroups = CgroupPaths()
        self.adoption = adoption.AdoptionStats()
        self.own_pid = os.getpid()
        self.events_seen = 0
        self.spans_out = 0
        self._lost_seen: dict[str, int] = {}

    def on_record(self, raw: bytes) -> None:
        event = decode(raw, self.clock)
        if event.pid == self.own_pid:
            return
        self.events_seen += 1
        ended = self.tracker.handle(event)
        if ended is not None:
            self.export_lifetime(ended)

    def export_lifetime(self, ended: Ended) -> None:
        span = self.builder.lifetime(ended, self.cgroups.path(ended.process.cgroup_id))
        self.processor.on_end(span)
        self.spans_out += 1

    def adopt(self, probe: Probe) -> None:
        s = self.settings
        scope_cgroup = None
        if s.scope.cgroup is not None and self.cgroups.mount:
            relative = os.path.relpath(os.path.realpath(s.scope.cgroup), self.cgroups.mount)
            scope_cgroup = "/" if relative == "." else "/" + relative
        found = adoption.running(s.match, s.all, self.clock, self.cgroups.mount, self.adoption, scope_cgroup)
        for event in found:
            probe.track(event.pid, event.start_ticks)
            self.tracker.handle(event)
        log.info(
            "adopted %d running processes (%d vanished while read, %d unreadable)",
            self.adoption.adopted, self.adoption.vanished, self.adoption.unreadable,
        )

    def housekeeping(self, probe: Probe) -> None:
        """Between polls: clock offset, 'started' spans that are due, processes superseded by pid reuse."""
        self.clock.refresh()
        now = time.time_ns()
        for process in self.tracker.due_announcements(now):
            self.processor.on_end(self.builder.started(process, self.cgroups.path(process.cgroup_id)))
            self.spans_out += 1
        while self.tracker.superseded:
            process = self.tracker.superseded.pop()
            self.export_lifetime(Ended(process, now, None, None, False))

    def report_losses(self, probe: Probe) -> None:
        lost = probe.lost()
        grown = {k: v - self._lost_seen.get(k, 0) for k, v in lost.items() if v > self._lost_seen.get(k, 0)}
        if grown:
            log.warning("kernel side dropped: %s", ", ".join(f"{k} +{v}" for k, v in grown.items()))
        self._lost_seen = lost

    def run(self) -> int:
        s = self.settings
        stop = StopSignal()
        deadline = None if s.duration is None else time.monotonic() + s.duration
        with Probe(probe_config(s), self.on_record) as probe:
            log.info("attached; %s; %s", describe_tracking(s), self.destination.description)
            if s.adopt:
                self.adopt(probe)
            next_lost_check = time.monotonic_ns() + LOST_CHECK_NS
            while not stop and (deadline is None or time.monotonic() < deadline):
                probe.poll(POLL_MS)
                self.housekeeping(probe)
                if time.monotonic_ns() >= next_lost_check:
                    self.report_losses(probe)
                    next_lost_check = time.monotonic_ns() + LOST_CHECK_NS
            probe.poll(0)
            self.housekeeping(probe)
            self.report_losses(probe)
        self.processor.shutdown()  # exports what is queued
        log.info(
            "stopped; %d events, %d spans, %d processes still running",
            self.events_seen, self.spans_out, len(self.tracker),
        )
        return 0


def run_sidecar(settings: Settings) -> int:
    require_caps(RUN_CAPS)
    return Sidecar(settings).run()
