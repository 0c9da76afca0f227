"""`otelproc run`: the probe, the tracker and the span exporter in one loop.

One thread polls the ring buffer and does all the tracking; the SDK's batch
processor exports on its own thread, the health server answers on another.
Signals only set a flag the loop reads. Between polls the loop does its
housekeeping: 'started' spans that are due, the /proc sweep, the state file.

The probe is pinned in bpffs (see pins.py), so it records while otelproc is
down; a SIGTERM leaves it pinned, for the next otelproc to drain and carry on
with. `otelproc detach` removes it for good.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan

from otelproc import adoption, pins, state
from otelproc.cgroups import CgroupPaths
from otelproc.checks import RUN_CAPS, require_caps
from otelproc.clock import BootClock
from otelproc.config import POLL_MS, ConfigError, Settings, describe_tracking, probe_config, tracking_config
from otelproc.decoder import ProcessEvent, decode
from otelproc.export import make_destination, make_processor
from otelproc.health import Health, HealthServer
from otelproc.loader import Probe
from otelproc.adoption import alive
from otelproc.reconcile import Reconciler
from otelproc.record import EventKind, EventLayout
from otelproc.spans import SpanBuilder, host_attributes
from otelproc.stop import StopSignal
from otelproc.telemetry import CountingExporter, Stats, bsp_max_queue_size, start_metrics
from otelproc.tracker import Ended, Tracker

log = logging.getLogger("otelproc")

LOSS_LOG_NS = 10_000_000_000  # kernel losses are logged at most this often
STATE_EVERY_NS = 1_000_000_000  # the state file is at most this far behind the table


def event_key(event: ProcessEvent) -> tuple:
    """Names one kernel event, so that the same event seen by two probes counts once."""
    if event.kind is EventKind.EXEC:
        return (event.kind, event.pid, event.start_ticks, event.exe, event.argv)
    return (event.kind, event.pid, event.start_ticks)


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
        self._lost_seen: dict[str, int] = {}  # the kernel's loss counters as last read
        self._overlap: set[tuple] = set()  # events the old probe of a takeover recorded while both ran
        self._changed = False  # the table changed since the state file was written
        self._next_state = 0  # monotonic ns: when the state file may be written (or touched) again

    # the hot path

    def on_record(self, raw: bytes) -> None:
        event = decode(raw, self.clock, self.layout)
        if self._overlap and event_key(event) in self._overlap:
            self._overlap.discard(event_key(event))
            return  # the old probe's copy of it was taken already
        self.handle(event)

    def handle(self, event: ProcessEvent) -> None:
        self.stats.events[event.kind] += 1
        self._changed = True
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

    def resume(self, path: Path | None) -> state.Saved:
        """Takes the processes a previous otelproc recorded into the table, alive or not (see settle)."""
        if path is None:
            return state.Saved()
        try:
            saved = state.load(path, tracking_config(self.settings))
        except state.StateFileError as exc:
            log.warning("%s; starting from /proc alone", exc)
            return state.Saved()
        # otelproc itself is left out, as from adoption: its own exit could never be reported.
        saved.processes = [p for p in saved.processes if p.pid != os.getpid()]
        for process in saved.processes:
            self.tracker.add(process)
        return saved

    def take_over(self, probe: Probe) -> None:
        """Reads what the old probe recorded up to now, in its own layout, then removes it.

        Both probes ran for a moment: what the old one recorded from then on is
        remembered, and the new probe's copy of it is skipped.
        """
        previous = probe.previous
        if previous is None:
            return
        both_from = self.clock.to_wall(probe.attached_at)
        self._lost_seen = {k: max(v, self._lost_seen.get(k, 0)) for k, v in previous.lost().items()}

        def on_old_record(raw: bytes) -> None:
            event = decode(raw, self.clock, previous.layout)
            if event.time >= both_from:
                self._overlap.add(event_key(event))
            self.handle(event)

        where = previous.dir
        drained = probe.retire_previous(on_old_record)
        log.info("took over the probe pinned in %s: %d records read in its own layout, then removed", where, drained)

    def count_downtime_losses(self, lost: dict[str, int], saved: state.Saved) -> bool:
        """What the pinned probe dropped while nobody read it (its ring was full): counted, logged."""
        grown = {k: v - saved.lost.get(k, 0) for k, v in lost.items() if v > saved.lost.get(k, 0)}
        self.stats.drops.update(grown)
        if grown:
            log.warning("while otelproc was down the kernel side dropped %s; the sweep will reconcile",
                        ", ".join(f"{v} ({k})" for k, v in grown.items()))
        return bool(grown)

    def settle(self, probe: Probe, saved: state.Saved, exits_read: bool) -> None:
        """After the downtime's records: the recorded processes that are gone with no exit record.

        exits_read: a pinned probe recorded the downtime and lost nothing, so
        their exits were read, by the previous otelproc in its last second.
        Otherwise each ends when it was last known alive, flagged approximate,
        with the window it ended in.
        """
        now = time.time_ns()
        gone = 0
        for process in saved.processes:
            if process.key not in self.tracker.processes:
                continue  # its exit came through the ring buffer
            if alive(process.pid, process.identity.start_ticks):
                probe.track(process.pid, process.identity.start_ticks)
                continue
            self.tracker.forget(process.key)
            gone += 1
            if exits_read:
                self.stats.reconciled["exit_read_before_restart"] += 1
            else:
                self.stats.reconciled["exited_while_down"] += 1
                self.export_lifetime(Ended.between(process, saved.last_alive, now))
        if saved.processes:
            log.info("resumed %d processes from the state file (%d gone with no exit record)",
                     len(saved.processes), gone)

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
        grown = {k: v - self._lost_seen.get(k, 0) for k, v in lost.items() if v > self._lost_seen.get(k, 0)}
        self._lost_seen = lost
        self.stats.drops.update(grown)
        if grown and time.monotonic_ns() >= self._next_loss_log:
            self._next_loss_log = time.monotonic_ns() + LOSS_LOG_NS
            log.warning(
                "the kernel side dropped %s; the /proc sweep will reconcile",
                ", ".join(f"{v} ({k})" for k, v in grown.items()),
            )

    def save_state(self, path: Path | None, now: bool = False) -> None:
        """Writes the table at most a second after it changed; else refreshes the file's mtime each second."""
        if path is None or not (now or time.monotonic_ns() >= self._next_state):
            return
        self._next_state = time.monotonic_ns() + STATE_EVERY_NS
        try:
            if self._changed or now or not path.exists():
                self._changed = False
                state.save(path, list(self.tracker.processes.values()), self.settings.redact,
                           tracking_config(self.settings), self._lost_seen)
            else:
                state.touch(path)
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

    def start(self, probe: Probe) -> None:
        """Carries on where the previous otelproc stopped, then adopts what /proc shows besides."""
        s = self.settings
        if probe.resumed:
            log.info("resumed the probe pinned in %s; reading what it recorded while otelproc was down",
                     probe.pinned_at)
        saved = self.resume(s.state_file)
        lost_then = probe.previous.lost() if probe.previous else probe.lost() if probe.resumed else None
        self.take_over(probe)
        probe.poll(0)  # what the resumed probe recorded while nobody read it
        self._lost_seen = probe.lost()
        lost_while_down = lost_then is not None and self.count_downtime_losses(lost_then, saved)
        self.settle(probe, saved, exits_read=lost_then is not None and not lost_while_down)
        if s.adopt:
            self.adopt(probe)
        self.save_state(s.state_file, now=True)

    def stop(self, probe: Probe) -> None:
        """A clean stop leaves the probe pinned and recording; one removed meanwhile (detach) goes for good."""
        path = self.settings.state_file
        if probe.pinned_at is not None and not probe.pinned_at.exists():
            log.info("the probe was detached; it goes with this process, and so does the state file")
            if path is not None:
                state.remove(path)
            return
        self.save_state(path, now=True)
        if probe.pinned_at is not None:
            log.info("the probe stays pinned in %s and keeps recording for the next otelproc; "
                     "`otelproc detach` removes it", probe.pinned_at)

    def run(self, pin_dir: Path | None = None) -> int:
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
            with Probe(probe_config(s, pin_dir), self.on_record) as probe:
                self.layout = probe.layout
                log.info("attached; %s; %s", describe_tracking(s), self.destination.description)
                if self.destination.metric_exporter is not None:
                    metrics = start_metrics(self.destination.metric_exporter, self.stats, self.gauges(probe), self.host)
                self.start(probe)
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
                        self._overlap.clear()  # the takeover's overlap was read long ago
                        self.read_kernel_losses(probe)
                        for ended in reconciler.sweep():
                            self._changed = True
                            self.export_lifetime(ended)
                    self.save_state(s.state_file)
                probe.poll(0)
                self.housekeeping()
                self.read_kernel_losses(probe)
                self.stop(probe)
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


def pinning(settings: Settings) -> tuple[Path | None, pins.PinLock | None]:
    """The pin directory to use, locked for this otelproc; none where bpffs cannot be had (said in one line)."""
    pin_dir = settings.pin_dir
    if pin_dir is None:
        return None, None
    lock_dir = settings.state_file.parent if settings.state_file is not None else pins.LOCK_DIR
    try:
        lock = pins.PinLock(pin_dir, lock_dir)
    except pins.PinError as exc:
        raise ConfigError(str(exc)) from None
    reason = pins.ensure_bpffs(pin_dir)
    if reason is not None:
        lock.release()
        log.warning("not pinning the probe: %s; a restart resumes from the state file alone", reason)
        return None, None
    return pin_dir, lock


def run_sidecar(settings: Settings) -> int:
    require_caps(RUN_CAPS)
    if settings.state_file is not None:
        check_state_file(settings.state_file)
    pin_dir, lock = pinning(settings)
    try:
        return Sidecar(settings).run(pin_dir)
    finally:
        if lock is not None:
            lock.release()


def detach(settings: Settings) -> int:
    """Removes the pinned probe for good (its programs, maps and pins) and the state file."""
    pin_dir = settings.pin_dir
    removed = 0
    if pin_dir is not None and pin_dir.exists():
        try:
            removed = pins.remove_all(pin_dir)
        except OSError as exc:
            raise ConfigError(f"cannot remove the probe pinned in {pin_dir} ({exc.strerror})") from None
    forgot = settings.state_file is not None and state.remove(settings.state_file)
    if removed:
        log.info("detached: removed the probe pinned in %s%s", pin_dir, "" if not forgot else ", and the state file")
    else:
        log.info("nothing pinned in %s%s", pin_dir, "" if not forgot else "; removed the state file")
    return 0
