"""`otelproc run`: the probe, the tracker and the span exporter in one loop.

One thread polls the ring buffer and does all the tracking; the SDK's batch
processor exports on its own thread, the health server answers on another.
Signals only set a flag the loop reads. Between polls the loop does its
housekeeping: 'started' spans that are due, the /proc sweep, the state file.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan

from otelproc import adoption, state
from otelproc.cgroups import CgroupPaths
from otelproc.checks import RUN_CAPS, require_caps
from otelproc.clock import BootClock
from otelproc.config import POLL_MS, ConfigError, Settings, describe_tracking, probe_config
from otelproc.decoder import decode
from otelproc.export import make_destination, make_processor
from otelproc.health import Health, HealthServer
from otelproc.loader import Probe
from otelproc.adoption import alive
from otelproc.reconcile import Reconciler
from otelproc.record import EventLayout
from otelproc.spans import SpanBuilder, host_attributes
from otelproc.stop import StopSignal
from otelproc.telemetry import CountingExporter, Stats, bsp_max_queue_size, start_metrics
from otelproc.tracker import Ended, Tracker

log = logging.getLogger("otelproc")

LOSS_LOG_NS = 10_000_000_000  # kernel losses are logged at most this often


class Sidecar:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = Stats()
        self.clock = BootClock()
        self.destination = make_destination(settings)
        self.processor = make_processor(CountingExporter(self.destination.exporter, self.stats))
        self.max_in_flight = bsp_max_queue_size()
        self.host = host_attributes()
        self.builder = SpanBuilder(settings.service_name, self.host, settings.redact, self.stats)
        self.tracker = Tracker(settings.max_processes, int(settings.start_span_delay * 1e9), self.stats)
        self.cgroups = CgroupPaths()
        self.adoption = adoption.AdoptionStats()
        self.health = Health()
        self._next_loss_log = 0
        self.layout: EventLayout | None = None  # the probe's struct event, once it is open

    # the hot path

    def on_record(self, raw: bytes) -> None:
        event = decode(raw, self.clock, self.layout)
        self.stats.events[event.kind] += 1
        ended = self.tracker.handle(event)
        if ended is not None:
            self.export_lifetime(ended)

    def emit(self, span: ReadableSpan, role: str) -> None:
        """Hands a span to the batch processor, or counts it dropped when its queue is full."""
        if self.stats.in_flight() >= self.max_in_flight:
            self.stats.drops["queue_full"] += 1
            return
        self.stats.spans[role] += 1
        self.processor.on_end(span)

    def export_lifetime(self, ended: Ended) -> None:
        self.emit(self.builder.lifetime(ended, self.cgroups.path(ended.process.cgroup_id)), "lifetime")

    # start-up

    def resume(self, probe: Probe, path: Path) -> None:
        """Carries on with the processes a previous otelproc recorded; ends those gone since."""
        try:
            recorded = state.load(path)
        except state.StateFileError as exc:
            log.warning("%s; starting from /proc alone", exc)
            return
        now = time.time_ns()
        # otelproc itself is left out, as from adoption: its own exit could never be reported.
        recorded = [p for p in recorded if p.pid != os.getpid()]
        for process in recorded:
            if alive(process.pid, process.identity.start_ticks):
                probe.track(process.pid, process.identity.start_ticks)
                self.tracker.add(process)
            else:
                self.stats.reconciled["exited_while_down"] += 1
                self.export_lifetime(Ended.unseen(process, now))
        if recorded:
            log.info(
                "resumed %d processes from %s (%d exited while otelproc was down)",
                len(recorded) - self.stats.reconciled["exited_while_down"],
                path,
                self.stats.reconciled["exited_while_down"],
            )

    def adopt(self, probe: Probe) -> int:
        """Takes on the matching processes /proc shows that the table does not hold; returns how many."""
        s = self.settings
        scope_cgroup = None
        if s.scope.cgroup is not None and self.cgroups.mount:
            relative = os.path.relpath(os.path.realpath(s.scope.cgroup), self.cgroups.mount)
            scope_cgroup = "/" if relative == "." else "/" + relative
        added = 0
        for event in adoption.running(s.match, s.all, self.clock, self.cgroups.mount, self.adoption, scope_cgroup):
            if (event.pid, event.start_ticks) in self.tracker.processes:
                continue
            probe.track(event.pid, event.start_ticks)
            self.tracker.handle(event)
            added += 1
        log.info(
            "adopted %d running processes (%d vanished while read, %d unreadable)",
            added, self.adoption.vanished, self.adoption.unreadable,
        )
        return added

    # between polls

    def housekeeping(self) -> None:
        """Clock offset, 'started' spans that are due, processes superseded by pid reuse."""
        self.clock.refresh()
        self.health.beat()
        now = time.time_ns()
        for process in self.tracker.due_announcements(now):
            self.emit(self.builder.started(process, self.cgroups.path(process.cgroup_id)), "started")
        while self.tracker.superseded:
            self.export_lifetime(Ended.unseen(self.tracker.superseded.pop(), now))

    def read_kernel_losses(self, probe: Probe) -> None:
        lost = probe.lost()
        grown = {k: v - self.stats.drops[k] for k, v in lost.items() if v > self.stats.drops[k]}
        self.stats.drops.update(grown)
        if grown and time.monotonic_ns() >= self._next_loss_log:
            self._next_loss_log = time.monotonic_ns() + LOSS_LOG_NS
            log.warning(
                "the kernel side dropped %s; the /proc sweep will reconcile",
                ", ".join(f"{v} ({k})" for k, v in grown.items()),
            )

    def save_state(self, path: Path | None) -> None:
        if path is None:
            return
        try:
            state.save(path, list(self.tracker.processes.values()), self.settings.redact)
        except OSError as exc:
            log.warning("cannot write state file %s: %s", path, exc)

    def gauges(self, probe: Probe) -> dict:
        return {
            "otelproc.processes.tracked": (lambda: len(self.tracker), "{process}", "processes in otelproc's table"),
            "otelproc.kernel.tracked": (lambda: len(probe.tracked()), "{process}", "entries in the kernel's map"),
            "otelproc.kernel.tracked.limit": (lambda: self.settings.max_processes, "{process}", "its size"),
            "otelproc.ringbuf.used": (probe.ring_used, "By", "ring buffer bytes not yet read"),
            "otelproc.ringbuf.size": (lambda: self.settings.ring_buffer_size, "By", "ring buffer size"),
        }

    def run(self) -> int:
        s = self.settings
        stop = StopSignal()
        deadline = None if s.duration is None else time.monotonic() + s.duration
        server = None
        if s.health_port:
            try:
                server = HealthServer(self.health, s.health_port)
            except OSError as exc:
                raise ConfigError(f"--health-port {s.health_port}: {exc.strerror}") from None
        metrics = None
        try:
            with Probe(probe_config(s), self.on_record) as probe:
                self.layout = probe.layout
                log.info("attached; %s; %s", describe_tracking(s), self.destination.description)
                if self.destination.metric_exporter is not None:
                    metrics = start_metrics(self.destination.metric_exporter, self.stats, self.gauges(probe), self.host)
                if s.state_file is not None:
                    self.resume(probe, s.state_file)
                if s.adopt:
                    self.adopt(probe)
                self.health.ready = True
                log.info("ready; %d processes tracked", len(self.tracker))
                reconciler = Reconciler(self.tracker, probe, self.clock, self.stats, lambda: self.adopt(probe),
                                        self.cgroups.mount, self.adoption)
                next_sweep = time.monotonic() + s.sweep_interval
                while not stop and (deadline is None or time.monotonic() < deadline):
                    probe.poll(POLL_MS)
                    self.housekeeping()
                    if time.monotonic() >= next_sweep:
                        next_sweep = time.monotonic() + s.sweep_interval
                        self.read_kernel_losses(probe)
                        for ended in reconciler.sweep():
                            self.export_lifetime(ended)
                        self.save_state(s.state_file)
                probe.poll(0)
                self.housekeeping()
                self.read_kernel_losses(probe)
                self.save_state(s.state_file)
                if metrics is not None:
                    metrics.shutdown()  # its last collection still reads the probe
                    metrics = None
        finally:
            self.health.ready = False
            self.processor.shutdown()  # exports what is queued, within the exporter's timeout
            if metrics is not None:
                metrics.shutdown()
            if server is not None:
                server.close()
        log.info("stopped; %s; %d processes still running", self.stats.summary(), len(self.tracker))
        return 0


def check_state_file(path: Path) -> None:
    """A state file that cannot be written is a configuration error, found at start, not at the first save."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-file {path}: cannot create {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--state-file {path}: {path.parent} is not writable")


def run_sidecar(settings: Settings) -> int:
    require_caps(RUN_CAPS)
    if settings.state_file is not None:
        check_state_file(settings.state_file)
    return Sidecar(settings).run()
