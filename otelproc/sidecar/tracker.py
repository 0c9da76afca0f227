"""The table of live tracked processes: events in, finished lifetimes out.

Keyed by (pid, start ticks), so a reused pid never merges two processes.
Bounded: when full, the oldest entry is evicted and counted; if its exit comes
later it still gets a span, built from the exit record alone.
"""

from __future__ import annotations

import collections
import signal
import time
from dataclasses import dataclass, field
from typing import Iterator

from otelproc.config import service_trace_bound
from otelproc.identity import ProcessIdentity, SpanPlace, TraceBound, boot_id, fresh_carrier, place
from otelproc.model import EventKind, OomKill, ProcessEvent, SignalSent, Usage
from otelproc.region import Region
from otelproc.servers import program_name
from otelproc.stats import Stats
from otelproc.sidecar.owners import Owners

ProcessKey = tuple[int, int]  # (pid, start ticks)
MAX_SIGNALS = 16  # signals kept per process, the most recent: a bound on its span events
# The SDK's default span event limit (OTEL_SPAN_EVENT_COUNT_LIMIT): more execs could not be exported anyway.
DEFAULT_MAX_EXECS = 128
# Lifetimes of a young parent's children kept until its process span is out; past it, its 'started' span goes early.
MAX_WAITING = 256
# An exit this soon after a SIGABRT from another process ends what the abort began (gunicorn's
# graceful timeout, 30 s, bounds how long a worker may take to wind down).
ABORT_WINDOW_NS = 30_000_000_000


def keep_latest(items: list, item: object, limit: int) -> int:
    """Appends item and lets the oldest go past limit; returns how many went (0 or 1)."""
    items.append(item)
    if len(items) <= limit:
        return 0
    del items[0]
    return 1


@dataclass(slots=True)
class Exec:
    """One exec of a tracked process, kept for its span's `exec` events."""

    time: int
    exe: str | None
    argv: tuple[str, ...] | None


@dataclass(slots=True)
class TrackedProcess:
    identity: ProcessIdentity
    origin: str  # how its start was seen: "exec", "fork", "adopted", or "exit" (start known only from its exit)
    start_time: int  # span start, Unix ns: exec, fork, or creation when adopted
    creation_time: int  # the process's own start (fork), Unix ns
    pid: int
    ppid: int
    vpid: int
    pidns: int
    uid: int
    gid: int
    comm: str
    exe: str | None
    argv: tuple[str, ...] | None
    cgroup_id: int
    cgroup: str
    otel_env: dict[str, str]
    truncated: set[str]
    span_place: SpanPlace
    parent_key: ProcessKey | None = None
    linked_parent: str | None = None  # its parent's process key, when the trace bound linked it instead of hanging it
    execs: list[Exec] = field(default_factory=list)  # the latest max_execs of them
    execs_dropped: int = 0  # older execs let go, so that a process that execs in a loop stays bounded
    owner: str | None = None  # user name of uid in the process's own view (owners.py)
    started_span_sent: bool = False  # its 'started' span is out: its trace placement is final
    legacy_started: bool = False  # that 'started' span was an older otelproc's, a child of the lifetime span
    depth: int = 0  # tracked ancestors its process span hangs under (0: a root, or under a TRACEPARENT)
    waiting: list[Ended] = field(default_factory=list)  # its children's lifetimes, until its process span is out
    parent_program: str | None = None
    signals: list[SignalSent] = field(default_factory=list)  # the last MAX_SIGNALS that could end it
    signals_dropped: int = 0  # older ones, forgotten
    oom: OomKill | None = None  # the OOM killer chose it

    @property
    def key(self) -> ProcessKey:
        return (self.pid, self.identity.start_ticks)

    @property
    def program(self) -> str:
        return program_name(self.exe, self.argv, self.comm, self.parent_program)


@dataclass(slots=True)
class Ended:
    """A finished lifetime, ready to become a span."""

    process: TrackedProcess
    end_time: int
    exit_code: int | None
    signal: int | None
    core_dumped: bool
    usage: Usage | None = None  # what it used; None when its exit was not seen
    gone_by: int | None = None  # set when the end lies in a window: end_time is its start (last seen alive)
    left: Region | None = None  # what its span region held when it ended (otelproc/region.py)

    @classmethod
    def unseen(cls, process: TrackedProcess, noticed_at: int) -> Ended:
        """A process found gone without its exit record: ended when that was noticed, status unknown."""
        return cls(process, noticed_at, None, None, False)

    @classmethod
    def between(cls, process: TrackedProcess, last_alive: int, noticed_at: int) -> Ended:
        """A process that ended while otelproc was down, unseen: its span ends when it was last known alive."""
        return cls(process, last_alive, None, None, False, gone_by=noticed_at)

    def oom_kill(self) -> OomKill | None:
        """The OOM killer's choice of it, when that is what ended it (its SIGKILL)."""
        return self.process.oom if self.signal == signal.SIGKILL else None

    def abort(self) -> SignalSent | None:
        """The SIGABRT another process sent it before it exited, when that exit ended what the abort began:
        a server giving up on a worker (gunicorn's timeout), which the worker handled, then exited."""
        if self.signal or self.exit_code is None:
            return None
        for sent in reversed(self.process.signals):
            if (
                sent.signal == signal.SIGABRT
                and not sent.from_kernel
                and sent.sender_pid != self.process.pid
                and 0 <= self.end_time - sent.time <= ABORT_WINDOW_NS
            ):
                return sent
        return None

    def dying_since(self) -> int | None:
        """When it was first asked to end, of the signals that led to its death (those another process or
        the kernel sent it within ABORT_WINDOW_NS before it ended): Unix ns, None when there was none."""
        times = [
            sent.time
            for sent in self.process.signals
            if (sent.from_kernel or sent.sender_pid != self.process.pid)
            and 0 <= self.end_time - sent.time <= ABORT_WINDOW_NS
        ]
        return min(times) if times else None

    def died(self) -> bool:
        """Whether it died rather than ended: a signal, an exit with an error status (os._exit(3) in the
        middle of a request), or an exit its server's abort forced. Its spans in flight then ended with
        it (a clean exit leaves none that were ever going to end)."""
        return bool(self.signal) or bool(self.exit_code) or self.abort() is not None

    def fatal_signal(self) -> SignalSent | None:
        """The sending of the signal that ended it, if it was seen.

        A process that handles a signal and then re-raises it to die by it (uvicorn
        with SIGTERM, Python with SIGINT, faulthandler with SIGSEGV) sends the last
        one to itself: the one that asked it to stop came before, from elsewhere.
        """
        sent = [s for s in self.process.signals if s.signal == self.signal]
        for s in reversed(sent):
            if s.from_kernel or s.sender_pid != self.process.pid:
                return s
        return sent[-1] if sent else None


class Tracker:
    def __init__(
        self,
        max_processes: int,
        started_span_after_ns: int,
        stats: Stats | None = None,
        owners: Owners | None = None,
        max_execs: int = DEFAULT_MAX_EXECS,
        bound: TraceBound | None = None,
    ) -> None:
        self.max_processes = max_processes
        self.bound = bound or service_trace_bound({})  # (an empty environment: the defaults)
        self.started_span_after_ns = started_span_after_ns
        self.owners = owners
        self.max_execs = max_execs
        self.processes: dict[ProcessKey, TrackedProcess] = {}
        self._by_pid: dict[int, ProcessKey] = {}
        self._started_spans_due: collections.deque[tuple[int, ProcessKey]] = collections.deque()
        self.stats = stats or Stats()
        self.begun = 0  # lifetimes begun by a kernel record (exec, fork): what the ring kept
        self.superseded: list[TrackedProcess] = []  # exits missed, found by pid reuse; the caller drains it
        self.released: list[Ended] = []  # lifetimes an evicted parent was keeping; the caller drains it
        self._boot_id = boot_id()

    def __len__(self) -> int:
        return len(self.processes)

    def parent_of(self, ppid: int) -> TrackedProcess | None:
        key = self._by_pid.get(ppid)
        return self.processes.get(key) if key else None

    def handle(self, event: ProcessEvent) -> Ended | None:
        """Applies one kernel event; returns the lifetime an exit ended."""
        key = (event.pid, event.start_ticks)
        if event.kind is EventKind.EXIT:
            return self._exit(key, event)
        if event.kind is EventKind.SIGNAL or event.kind is EventKind.OOM:
            target = self.processes.get(key)
            if target is not None:
                self._note(target, event)
            return None
        known = self.processes.get(key)
        if known is not None:
            if event.kind is EventKind.EXEC:
                self._exec_again(known, event)
            return None
        if event.kind is EventKind.FORK:
            self.begun += 1
            self.add(self._new(event, "fork", event.start_time, inherit=True))
        elif event.kind is EventKind.EXEC:
            self.begun += 1
            self.add(self._new(event, "exec", event.time, inherit=False))
        elif event.kind is EventKind.ADOPT:
            self.add(self._new(event, "adopted", event.start_time, inherit=False))
        return None

    def add(self, process: TrackedProcess) -> None:
        if process.key in self.processes:
            return
        old = self._by_pid.get(process.pid)
        if old is not None:
            # Same pid, another start: the old holder's exit was missed; it ended by now.
            superseded = self.forget(old)
            if superseded is not None:
                self.stats.reconciled["pid_reused"] += 1
                self.superseded.append(superseded)
        while len(self.processes) >= self.max_processes:  # only once a reused pid has made its room
            evicted = self.forget(next(iter(self.processes)))
            self.stats.drops["table_full"] += 1
            if evicted is not None:  # its span will come from its exit record: its children need not wait
                self.released.extend(evicted.waiting)
        self.processes[process.key] = process
        self._by_pid[process.pid] = process.key
        self._started_spans_due.append((time.time_ns() + self.started_span_after_ns, process.key))

    def forget(self, key: ProcessKey) -> TrackedProcess | None:
        process = self.processes.pop(key, None)
        if process is not None and self._by_pid.get(process.pid) == key:
            del self._by_pid[process.pid]
        return process

    def _new(self, event: ProcessEvent, origin: str, start_time: int, inherit: bool) -> TrackedProcess:
        parent = self.parent_of(event.ppid)
        exe, argv, otel_env = event.exe, event.argv, dict(event.otel_env)
        if inherit and parent is not None:
            # A forked child runs its parent's program, with its parent's environment and root.
            exe, argv, otel_env = parent.exe, parent.argv, dict(parent.otel_env)
        owner = self._owner(event, parent)
        identity = ProcessIdentity(self._boot_id, event.pidns, event.vpid, event.start_ticks)
        span_place = self._place(identity, otel_env, parent)
        process = TrackedProcess(
            identity=identity,
            origin=origin,
            start_time=start_time,
            creation_time=event.start_time,
            pid=event.pid,
            ppid=event.ppid,
            vpid=event.vpid,
            pidns=event.pidns,
            uid=event.uid,
            gid=event.gid,
            comm=event.comm,
            exe=exe,
            argv=argv,
            cgroup_id=event.cgroup_id,
            cgroup=event.cgroup,
            otel_env=otel_env,
            truncated=set(event.truncated),
            span_place=span_place,
            parent_key=parent.key if parent else None,
            linked_parent=parent.identity.key if parent and span_place.linked else None,
            parent_program=parent.program if parent else None,
            owner=owner,
        )
        process.depth = self.depth(process)
        return process

    def _owner(self, event: ProcessEvent, same_root: TrackedProcess | None) -> str | None:
        """The owner's name; one a process of the same root already has for the same uid is taken as it
        is (a child from its parent, a process from itself before an exec): no /proc read on this thread."""
        if same_root is not None and same_root.uid == event.uid:
            return same_root.owner
        if self.owners is None:
            return None
        return self.owners.name(event.pid, event.uid, event.pidns)

    def _place(self, identity: ProcessIdentity, otel_env: dict[str, str], parent: TrackedProcess | None) -> SpanPlace:
        if parent is not None and parent.pidns != identity.pidns:
            # A parent outside the child's pid namespace is invisible from inside it; the child
            # could not compute a context that depends on it, so it starts a trace of its own.
            parent = None
        parent_traceparent = parent.otel_env.get("TRACEPARENT") if parent else None
        carrier, malformed = fresh_carrier(otel_env.get("TRACEPARENT"), otel_env.get("TRACESTATE"), parent_traceparent)
        if malformed:
            self.stats.malformed["traceparent"] += 1
        return place(identity, carrier, parent.span_place if parent else None, self.bound)

    def _exec_again(self, process: TrackedProcess, event: ProcessEvent) -> None:
        """Same process, new program: the span stays, the exec becomes a span event."""
        process.execs_dropped += keep_latest(process.execs, Exec(event.time, event.exe, event.argv), self.max_execs)
        process.exe, process.argv, process.comm = event.exe, event.argv, event.comm
        process.otel_env = dict(event.otel_env)
        process.truncated |= set(event.truncated)
        process.cgroup_id, process.cgroup = event.cgroup_id, event.cgroup
        process.owner = self._owner(event, process)  # an exec keeps the root: a new name only with a new uid
        process.uid, process.gid = event.uid, event.gid
        if not process.started_span_sent:
            # Nothing of it exported yet: its new environment (a TRACEPARENT
            # given to the exec, say) may still place it.
            parent = self.processes.get(process.parent_key) if process.parent_key else None
            process.span_place = self._place(process.identity, process.otel_env, parent)
            process.linked_parent = parent.identity.key if parent and process.span_place.linked else None
            process.depth = self.depth(process)

    @staticmethod
    def _note(process: TrackedProcess, event: ProcessEvent) -> None:
        """A signal sent to it, or the OOM killer's choice: kept for its span."""
        if event.oom is not None:
            process.oom = event.oom
        if event.sent is not None:
            process.signals_dropped += keep_latest(process.signals, event.sent, MAX_SIGNALS)

    def _exit(self, key: ProcessKey, event: ProcessEvent) -> Ended:
        process = self.forget(key)
        if process is None:
            self.stats.reconciled["exec_missed"] += 1
            process = self._new(event, "exit", event.start_time, inherit=True)
        process.comm = event.comm
        return Ended(process, event.time, event.exit_code, event.signal, event.core_dumped, event.usage)

    def take_due_started_spans(self, now_ns: int) -> Iterator[TrackedProcess]:
        """Processes alive past the start-span delay whose 'started' span is not out yet, in the order
        they were added: a parent (added before its child) before its child."""
        while self._started_spans_due and self._started_spans_due[0][0] <= now_ns:
            _, key = self._started_spans_due.popleft()
            process = self.processes.get(key)
            if process is not None and not process.started_span_sent:
                process.started_span_sent = True
                yield process

    def hold(self, ended: Ended) -> bool:
        """Keeps a lifetime whose tracked parent has no span out yet with that parent, until the parent's
        'started' span goes out (at most --start-span-delay later) or the parent ends and its lifetime span
        is its process span: no span names a parent that is not out, and a short-lived process costs one
        span. False when there is no such parent, or it keeps MAX_WAITING already."""
        parent = self.hung_from(ended.process)
        if parent is None or parent.started_span_sent or len(parent.waiting) >= MAX_WAITING:
            return False
        parent.waiting.append(ended)
        return True

    def claim_unsent_parents(self, process: TrackedProcess) -> list[TrackedProcess]:
        """The tracked ancestors a span of `process` hangs from, directly or through each other, whose
        process span is not out yet, topmost first; marked sent. The caller sends their 'started' spans
        first, so that no span names a parent that is not exported yet: when a parent keeps too many
        lifetimes already, or otelproc stops."""
        unsent: list[TrackedProcess] = []
        parent = self.hung_from(process)
        while parent is not None and not parent.started_span_sent:
            parent.started_span_sent = True
            unsent.append(parent)
            parent = self.hung_from(parent)
        unsent.reverse()
        return unsent

    def depth(self, process: TrackedProcess) -> int:
        """How many tracked ancestors its process span hangs under, fixed while its parent is known:
        a 'started' span lasts one nanosecond more than its parent's (see SpanBuilder.started)."""
        parent = self.hung_from(process)
        return parent.depth + 1 if parent is not None else 0

    def hung_from(self, process: TrackedProcess) -> TrackedProcess | None:
        """The tracked parent whose process span is the parent of this one's, if it has one."""
        parent = self.processes.get(process.parent_key) if process.parent_key else None
        if (
            parent is None
            or process.span_place.remote_parent
            or process.span_place.parent_span_id != parent.span_place.span_id
        ):
            return None  # placed under a TRACEPARENT, or a root (its parent is in another pid namespace)
        return parent
