"""`otelproc run`: the probe, the tracker and the span exporter in one loop.

One thread polls the ring buffer and does all the tracking; the SDK's batch
processor exports on its own thread, the health server answers on another, and
the /proc sweep and the state file have a thread of their own (reconcile.Sweeper),
so that nothing which grows with the host keeps the ring buffer waiting.
Signals only set a flag the loop reads. Between polls the loop does its
housekeeping: 'started' spans that are due, what the sweeps found. The state
file is written on a thread of its own too (state.Writer).

Each stage of the event path (decode, track, build, export, sweep, adopt, state
file) is isolated: a failure is counted by stage (otelproc.failures), logged at most
every few seconds, and the loop goes on with the next record.

The probe is pinned in bpffs (see pins.py), so it records while otelproc is
down; a SIGTERM leaves it pinned, for the next otelproc to drain and carry on
with (restart.Carryover, which keeps the state file too). SIGINT (Ctrl-C: a person, not a
service manager) detaches it, as `otelproc detach` does, unless --keep-probe. A stop takes
at most --stop-timeout seconds; spans not delivered by then are kept for the next start (unsent.py).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from pathlib import Path
from typing import Callable

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanContext

from otelproc.clock import BootClock
from otelproc.config import (
    INITIAL_PIDNS_INODE,
    POLL_MS,
    ConfigError,
    Settings,
    describe_tracking,
    own_pidns_inode,
    trace_bound,
    tracking_config,
)
from otelproc.kernel import pins
from otelproc.kernel.checks import RUN_CAPS, require_caps
from otelproc.kernel.decoder import decode
from otelproc.kernel.probe import Probe, ProbeConfig
from otelproc.kernel.record import EventLayout
from otelproc.otel import unsent
from otelproc.otel.exporters import queue_bound
from otelproc.otel.outlet import Outlet, open_outlet
from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.otel.telemetry import start_metrics
from otelproc.plural import count
from otelproc.sidecar import adoption, state
from otelproc.sidecar.cgroups import CgroupPaths
from otelproc.sidecar.health import Health, HealthServer
from otelproc.model import EventKind, ProcessEvent
from otelproc.sidecar.adoption import alive
from otelproc.sidecar.owners import Owners
from otelproc.sidecar.reconcile import Reconciler, Sweeper
from otelproc.sidecar.regions import Regions
from otelproc.sidecar.restart import Carryover
from otelproc.sidecar.tracker import DEFAULT_MAX_EXECS, Ended, TrackedProcess, Tracker
from otelproc.stats import Stats, StageFailures, ThrottledLog
from otelproc.stop import StopSignal

log = logging.getLogger("otelproc")

LOSS_LOG_NS = 10_000_000_000  # kernel losses are logged at most this often
HOUSEKEEPING_NS = 10_000_000  # work between two polls of the ring buffer, at most about this long


class Sidecar:
    """The record path (record in, span out) and the loop that drives it. Its parts are built by
    build_sidecar and given to it; what carries over from one otelproc to the next is
    restart.Carryover's, what /proc shows is adoption.Scanner's."""

    def __init__(
        self,
        settings: Settings,
        *,
        stats: Stats,
        failed: StageFailures,
        clock: BootClock,
        tracker: Tracker,
        builder: SpanBuilder,
        outlet: Outlet,
        carryover: Carryover,
        scanner: adoption.Scanner,
        cgroups: CgroupPaths,
        regions: Regions,
        host: dict[str, str],
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.failed = failed
        self.clock = clock
        self.tracker = tracker
        self.builder = builder
        self.outlet = outlet
        self.carryover = carryover
        self.scanner = scanner
        self.cgroups = cgroups
        self.regions = regions
        self.host = host
        self.health = Health()
        self.loss_log = ThrottledLog(LOSS_LOG_NS)
        self.layout: EventLayout | None = None  # the probe's struct event, once it is open
        self.sweeper: Sweeper | None = None  # the /proc sweep's thread, once the probe is attached
        self._lost_seen: dict[str, int] = {}  # the kernel's loss counters as last read

    # the hot path

    def on_record(self, raw: bytes, layout: EventLayout | None = None) -> None:
        """One record of this probe's ring buffer (or, with its layout, of the probe taken over)."""
        stage = "decode"
        try:
            event = decode(raw, self.clock, layout or self.layout)
            if self.carryover.seen_before(event, from_old_probe=layout is not None):
                return  # the old probe's copy of it was taken already
            self.stats.events[event.kind] += 1
            if event.kind is EventKind.REGION:
                stage = "region"
                self.open_region(event)
                return
            stage = "track"
            ended = self.tracker.handle(event)
        except Exception as exc:  # noqa: BLE001 -- one record must not end the sidecar
            self.failed(stage, exc)
            return
        self.carryover.mark_dirty()
        if ended is not None:
            self.export_lifetime(ended)

    def open_region(self, event: ProcessEvent) -> None:
        """A tracked process created its span region: opened now, while the process lives."""
        process = self.tracker.processes.get((event.pid, event.start_ticks))
        if process is not None and event.region_fd is not None:
            self.regions.open(process.key, process.pid, process.uid, event.region_fd)

    def export_lifetime(self, ended: Ended) -> None:
        """A lifetime span, once the span it hangs from is out (Tracker.hold), then those it kept waiting.
        What its span region held is read now, at its end."""
        self.carryover.mark_dirty()
        process = ended.process
        try:
            ended.left = self.regions.take(process.key, process.vpid, process.identity.start_ticks, ended.died())
        except Exception as exc:  # noqa: BLE001 -- a region costs its own spans at most
            self.failed("region", exc)
        if self.tracker.hold(ended):
            return
        for parent in self.tracker.claim_unsent_parents(ended.process):
            self.export_started(parent)
        self.send_lifetime(ended)

    def send_lifetime(self, ended: Ended) -> None:
        """The spans its process left in its span region, then its lifetime span, linked to those that
        died in flight with it."""
        died_in_flight: list[SpanContext] = []
        try:
            spans, died_in_flight = self.builder.unfinished(ended)
        except Exception as exc:  # noqa: BLE001
            self.failed("build", exc)
            spans = []
        for span in spans:
            self.emit(span, "app")
        cgroup_path = self.cgroups.path(ended.process.cgroup_id)
        self.export(lambda: self.builder.lifetime(ended, cgroup_path, died_in_flight), "lifetime")
        self.send_waiting(ended.process)

    def export_started(self, process: TrackedProcess) -> None:
        self.carryover.mark_dirty()  # sent: the state file says so, and the next otelproc sends it no more
        self.export(lambda: self.builder.started(process, self.cgroups.path(process.cgroup_id)), "started")
        self.send_waiting(process)

    def send_waiting(self, process: TrackedProcess) -> None:
        """The lifetimes of its children that waited for its process span, now out."""
        waiting, process.waiting = process.waiting, []
        for ended in waiting:
            self.send_lifetime(ended)

    def release_waiting(self) -> None:
        """At a stop: the lifetimes still waiting for a young parent's span go out, after that parent's
        'started' span (the state file keeps no lifetime; the next otelproc sends that span no more)."""
        for process in [p for p in self.tracker.processes.values() if p.waiting]:
            for parent in [*self.tracker.claim_unsent_parents(process), process]:
                if parent is process:
                    process.started_span_sent = True
                self.export_started(parent)

    def export(self, build: Callable[[], ReadableSpan], role: str) -> None:
        """Builds a span and hands it on; a failure of either is counted and skipped."""
        try:
            span = build()
        except Exception as exc:  # noqa: BLE001
            self.failed("build", exc)
            return
        self.emit(span, role)

    def emit(self, span: ReadableSpan, role: str) -> None:
        """Hands a span to the outlet; a failure is counted and skipped."""
        try:
            self.outlet.emit(span, role)
        except Exception as exc:  # noqa: BLE001
            self.failed("export", exc)

    # between polls

    def housekeeping(self) -> None:
        """Clock offset, what sweeps found, 'started' spans that are due, processes superseded by
        pid reuse. Within HOUSEKEEPING_NS: what is left waits for the next turn, so that the ring
        buffer is read again soon (20,000 processes started at once are 20,000 'started' spans)."""
        self.clock.refresh()
        self.health.beat()
        now = time.time_ns()
        deadline = time.monotonic_ns() + HOUSEKEEPING_NS
        sweeper = self.sweeper
        findings = sweeper.ready() if sweeper is not None else None
        while sweeper is not None and findings is not None and time.monotonic_ns() < deadline:
            try:
                ends = sweeper.reconciler.apply(findings, deadline)
            except Exception as exc:  # noqa: BLE001
                findings.gone.clear()
                findings.found.clear()
                self.failed("sweep", exc)
                ends = []
            for ended in ends:
                self.export_lifetime(ended)
            findings = sweeper.ready()
        for process in self.tracker.take_due_started_spans(now):
            self.export_started(process)
            if time.monotonic_ns() >= deadline:
                break
        while self.tracker.superseded:
            self.export_lifetime(Ended.unseen(self.tracker.superseded.pop(), now))
        while self.tracker.released:
            self.send_lifetime(self.tracker.released.pop())

    def read_kernel_losses(self, probe: Probe) -> None:
        try:
            lost = probe.lost()
        except Exception as exc:  # noqa: BLE001
            self.failed("sweep", exc)
            return
        grown = {k: v - self._lost_seen.get(k, 0) for k, v in lost.items() if v > self._lost_seen.get(k, 0)}
        self._lost_seen = lost
        self.stats.drops.update(grown)
        if grown:
            self.loss_log.warning(
                "kernel",
                "the kernel side dropped %s; the /proc sweep will reconcile",
                ", ".join(f"{v} ({k})" for k, v in grown.items()),
            )

    def table(self) -> list[TrackedProcess]:
        """One copy of the table's entries, for the state file's thread."""
        return list(self.tracker.processes.values())

    def gauges(self, probe: Probe) -> dict[str, tuple[Callable[[], int], str, str]]:
        return {
            "otelproc.processes.tracked": (lambda: len(self.tracker), "{process}", "processes in otelproc's table"),
            "otelproc.kernel.tracked": (lambda: len(probe.tracked()), "{process}", "entries in the kernel's map"),
            "otelproc.kernel.tracked.limit": (lambda: self.settings.max_processes, "{process}", "its size"),
            "otelproc.ringbuf.used": (probe.ring_used, "By", "ring buffer bytes not yet read"),
            "otelproc.ringbuf.size": (lambda: self.settings.ring_buffer_size, "By", "ring buffer size"),
            "otelproc.ringbuf.away.max": (
                lambda: self.stats.ring_away_max_ns // 1_000_000,
                "ms",
                "longest time the reader spent between two reads of the ring buffer",
            ),
        }

    # the sidecar's life: attach, loop, drain, shut down

    def run(self, pin_dir: Path | None = None) -> int:
        """Attaches the probe, carries on from the last otelproc, polls until a signal or --duration,
        drains what is left, and shuts down: one way out, whatever ended the loop (an error too)."""
        s = self.settings
        stop = StopSignal()
        server = self.serve_health()
        probe: Probe | None = None
        metrics: MeterProvider | None = None
        fate = ""  # what became of the probe, for the stop line
        try:
            probe = Probe(ProbeConfig.from_settings(s, pin_dir), self.on_record)
            metrics = self.attach(probe)
            self.loop(probe, stop)
            stop.begin()
            self.drain(probe)
            fate = self.leave(probe, detach=stop.interactive and not s.keep_probe)
        finally:
            stop_by = stop.begin() + s.stop_timeout
            if self.sweeper is not None:
                self.sweeper.stop()  # before the probe closes: a sweep reads its map
            self.health.ready = False
            self.carryover.close()
            self.regions.close()
            if metrics is not None:
                # Its last collection reads the probe, so it goes first. Half of what is left of the stop,
                # at most: the spans' turn comes next, and a collector that does not answer takes all it is given.
                metrics.shutdown(timeout_millis=stop.left_ms(s.stop_timeout) / 2)
            if probe is not None:
                probe.close()
            unsent_words = self.outlet.finish(stop_by, lambda: stop.again)
            if server is not None:
                server.close()
        log.info(
            "stopped; %s; %s still running; failed: %s; longest away from the ring buffer: %d ms; %s, in %.1f s%s",
            self.stats.summary(),
            count(len(self.tracker), "process"),
            self.stats.failures_summary(),
            self.stats.ring_away_max_ns // 1_000_000,
            stop.cause,
            time.monotonic() - stop_by + s.stop_timeout,
            "".join(f"; {words}" for words in (fate, unsent_words) if words),
        )
        return 0

    def serve_health(self) -> HealthServer | None:
        port = self.settings.health_port
        if not port:
            return None
        try:
            return HealthServer(self.health, port)
        except OSError as exc:
            raise ConfigError(f"--health-port {port}: {exc.strerror}") from None

    def attach(self, probe: Probe) -> MeterProvider | None:
        """With the probe attached: otelproc's own metrics, the previous otelproc's processes and records,
        the processes /proc shows, the /proc sweep; then ready. Returns the metrics' provider, if any."""
        self.layout = probe.layout
        log.info("attached; %s; %s", describe_tracking(self.settings), self.outlet.description)
        for program in probe.left_out:
            log.warning("%s", program.warning())
        metrics = None
        if self.outlet.metric_exporter is not None:
            metrics = start_metrics(self.outlet.metric_exporter, self.stats, self.gauges(probe), self.host)
        resumed = self.carryover.begin(probe, self.on_record)
        self._lost_seen = resumed.lost
        for ended in resumed.ended:
            self.export_lifetime(ended)
        if self.settings.adopt:
            self.adopt(probe)
        for process in list(self.tracker.processes.values()):  # running before this otelproc saw them start
            self.regions.find(process.key, process.pid, process.uid)
        self.carryover.start_writing(self.table, lambda: dict(self._lost_seen))
        self.health.ready = True
        # What exists now (modules, the SDK, gRPC: some 100,000 objects) stays for otelproc's life.
        # Frozen, it is left out of every garbage collection, which holds the GIL and so keeps the ring
        # buffer waiting; what is frozen is still freed when unreferenced.
        gc.collect()  # what is garbage already goes first: frozen, it would stay
        gc.freeze()
        log.info("ready; %s tracked", count(len(self.tracker), "process"))
        reconciler = Reconciler(
            self.tracker, probe, self.stats, self.scanner.snapshot, self.scanner.running, self.failed
        )
        self.sweeper = Sweeper(reconciler, self.settings.sweep_interval, self.failed)
        self.sweeper.start()
        return metrics

    def adopt(self, probe: Probe) -> int:
        """Takes on the matching processes /proc shows that the table does not hold; returns how many.
        One that fails is counted (stage 'adopt') and skipped, as a record of the ring buffer is."""
        added = 0
        for event in self.scanner.running(lambda pid, start_ticks: (pid, start_ticks) in self.tracker.processes):
            probe.track(event.pid, event.start_ticks)
            try:
                self.tracker.handle(event)
            except Exception as exc:  # noqa: BLE001 -- one process must not keep the others untracked
                self.failed("adopt", exc)
                continue
            self.carryover.mark_dirty()
            added += 1
        log.info(
            "adopted %s (%d vanished while read, %d unreadable)",
            count(added, "running process"),
            self.scanner.stats.vanished,
            self.scanner.stats.unreadable,
        )
        return added

    def loop(self, probe: Probe, stop: StopSignal) -> None:
        """Reads the ring buffer every POLL_MS and keeps house between reads, until a signal or --duration."""
        interval = self.settings.sweep_interval
        deadline = None if self.settings.duration is None else time.monotonic() + self.settings.duration
        next_loss_read = time.monotonic() + interval
        polled = time.monotonic_ns()
        while not stop and (deadline is None or time.monotonic() < deadline):
            self.stats.ring_away_max_ns = max(self.stats.ring_away_max_ns, time.monotonic_ns() - polled)
            probe.poll(POLL_MS)
            polled = time.monotonic_ns()
            self.housekeeping()
            if time.monotonic() >= next_loss_read:
                next_loss_read = time.monotonic() + interval
                self.carryover.end_overlap()
                self.read_kernel_losses(probe)
                self.regions.prune(alive)

    def drain(self, probe: Probe) -> None:
        """After the loop: the last records, and all the last sweep found."""
        assert self.sweeper is not None
        self.sweeper.stop()
        probe.poll(0)
        self.housekeeping()
        while self.sweeper.ready() is not None:
            self.housekeeping()
        self.read_kernel_losses(probe)

    def leave(self, probe: Probe, detach: bool) -> str:
        """The state file for the next otelproc, the probe left pinned or (detach) removed. Returns what
        became of the probe, for the stop line."""
        self.release_waiting()
        return self.carryover.finish(probe, detach)


def build_sidecar(settings: Settings, processor: SpanProcessor | None = None) -> Sidecar:
    """The sidecar and its parts, made from the settings in one place. With a processor, spans go to it
    as they are made (a test's, a benchmark's), instead of to --exporter behind a bounded stop."""
    stats = Stats()
    failed = StageFailures(stats)
    clock = BootClock()
    host = host_attributes()
    builder = SpanBuilder(settings.service_name, host, settings.redact, stats, settings.clean_signals, settings.usage)
    tracker = Tracker(
        settings.max_processes,
        int(settings.start_span_delay * 1e9),
        stats,
        Owners(),
        builder.limits.max_events or DEFAULT_MAX_EXECS,
        trace_bound(settings.trace_spans, settings.trace_window),
    )
    cgroups = CgroupPaths()
    regions = Regions(stats)
    if processor is None:
        outlet = open_outlet(settings, stats)
    else:
        outlet = Outlet(processor, stats, queue_bound(), f"handing spans to {type(processor).__name__}")
    return Sidecar(
        settings,
        stats=stats,
        failed=failed,
        clock=clock,
        tracker=tracker,
        builder=builder,
        outlet=outlet,
        carryover=Carryover(
            settings.state_file,
            tracking_config(settings),
            settings.redact,
            settings.adopt,
            tracker,
            stats,
            clock,
            failed,
        ),
        scanner=adoption.Scanner(settings.match, settings.trace_all, clock, cgroups.mount, settings.scope.cgroup),
        cgroups=cgroups,
        regions=regions,
        host=host,
    )


def check_state_file(path: Path) -> None:
    """A state file that cannot be written is a configuration error, found at start, not at the first save."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-file {path}: cannot create {path.parent} ({exc.strerror})") from None
    if path.is_dir():
        raise ConfigError(f"--state-file {path}: is a directory; give the path of a file")
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(f"--state-file {path}: {path.parent} is not writable")


def check_scope(settings: Settings) -> None:
    """Host and cgroup scopes number processes as the host does; inside a pid namespace of its own
    otelproc's /proc numbers them otherwise, so every sweep would find them all gone."""
    if settings.scope.kind != "pidns" and own_pidns_inode() != INITIAL_PIDNS_INODE:
        raise ConfigError(
            f"--scope {settings.scope}: otelproc runs in a pid namespace of its own, whose /proc does not show "
            "the host's pids; use --scope pidns, or run otelproc in the host's pid namespace (hostPID: true)"
        )


def pinning(settings: Settings) -> tuple[Path | None, pins.PinLock | None]:
    """The pin directory to use, locked for this otelproc; none where bpffs cannot be had (said in one line)."""
    pin_dir = settings.pin_dir
    if pin_dir is None:
        return None, None
    reason = pins.ensure_bpffs(pin_dir)
    if reason is not None:
        log.warning("not pinning the probe: %s; a restart resumes from the state file alone", reason)
        return None, None
    return pin_dir, pins.PinLock(pin_dir)


def run_sidecar(settings: Settings) -> int:
    check_scope(settings)
    require_caps(RUN_CAPS)
    if settings.state_file is not None:
        check_state_file(settings.state_file)
    pin_dir, lock = pinning(settings)
    try:
        return build_sidecar(settings).run(pin_dir)
    finally:
        if lock is not None:
            lock.release()


def detach(settings: Settings) -> int:
    """Removes the pinned probe for good (its programs, maps and pins), the state file and the spans a
    stop kept for the next start (unsent-spans.pb): what was detached for good is not carried on with."""
    pin_dir = settings.pin_dir
    removed, running, lingering = 0, None, []
    if pin_dir is not None and pin_dir.exists():
        if not pins.on_bpffs(pin_dir):  # what is not bpffs holds no probe, and files of other things
            raise ConfigError(
                f"--pin-dir {pin_dir}: not on a bpffs mount, so no probe is pinned there; nothing removed"
            )
        try:
            running = pins.holder(pin_dir)
            programs = [] if running else pins.programs(pin_dir)
            removed = pins.remove_all(pin_dir)
        except OSError as exc:
            raise ConfigError(f"cannot remove the probe pinned in {pin_dir} ({exc.strerror})") from None
        lingering = pins.wait_unloaded(programs)  # detached means gone from `bpftool prog show` too
    also = []
    if settings.state_file is not None and state.remove(settings.state_file):
        also.append("the state file")
    discarded = unsent.discard(unsent.path_beside(settings.state_file))
    if discarded is not None:
        also.append(f"{count(discarded, 'span')} a stop kept for the next start ({unsent.FILE_NAME})")
    removed_too = " and ".join(also)
    if removed and running:
        log.info(
            "unpinned the probe in %s%s; otelproc (pid %s) still runs it, until it stops",
            pin_dir,
            f", and removed {removed_too}" if also else "",
            running,
        )
    elif removed and lingering:
        log.warning(
            "removed the probe pinned in %s%s; the kernel still holds its programs %s: another process has "
            "them open (bpftool prog show lists them with their pids)",
            pin_dir,
            f", and {removed_too}" if also else "",
            ", ".join(map(str, lingering)),
        )
    elif removed:
        log.info("detached: removed the probe pinned in %s%s", pin_dir, f", {removed_too}" if also else "")
    else:
        where = f"in {pin_dir}" if pin_dir is not None else "(no --pin-dir: otelproc pins nothing)"
        log.info("nothing pinned %s%s", where, f"; removed {removed_too}" if also else "")
    return 0
