"""Trace and span ids derived from a process's identity, so anyone can compute them.

A process is named by what it can see of itself from inside its own container:

    boot id        /proc/sys/kernel/random/boot_id (the same in every namespace)
    pid namespace  inode of /proc/self/ns/pid
    vpid           its pid in that namespace
    start ticks    field 22 of /proc/self/stat (clock ticks since boot)

joined as "<boot id>/<pidns inode>/<vpid>/<start ticks>" (the *process key*).
Pids are reused; the start time tells two holders of one pid apart.

    process span id  = first  8 bytes of SHA-256("otelproc span "     + key)
    lifetime span id = first  8 bytes of SHA-256("otelproc lifetime " + key)
    trace id of a root process = first 16 bytes of SHA-256("otelproc trace " + key)

The *process span* is a process's first span, the one everything points at: its
'started' span while it runs, or its lifetime span when it ended before its 'started'
span was due. Its tracked children hang from it, and request spans link to it, so a
link or a parent exists from the moment the process span is out, whether the process
still runs or not. A process whose 'started' span went out gets its lifetime span at
exit under the lifetime span id, as a child of the 'started' span. Never one id twice.

Which trace a process's span joins (in this order):
 1. a TRACEPARENT in its environment at exec that its tracked parent did not also
    have: the carrier's trace, as a child of the carrier's span;
 2. a tracked parent whose trace still has room (TraceBound): the parent's trace,
    as a child of the parent's span;
 3. otherwise its own trace id, as a root span; past the bound, linked to its
    tracked parent's process span.
A restarted sidecar and the process itself (otelproc.app.links) compute the same ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from opentelemetry.trace import SpanContext, TraceFlags, TraceState, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


@lru_cache(maxsize=1)
def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _digest(label: bytes, key: str, size: int) -> int:
    value = int.from_bytes(hashlib.sha256(label + key.encode()).digest()[:size], "big")
    return value or 1  # all-zero ids are invalid; the odds are 2**-64, the guard is free


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    boot_id: str
    pidns: int
    vpid: int
    start_ticks: int
    key: str = field(init=False, repr=False, compare=False)  # joined once: three ids and an attribute use it

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.boot_id}/{self.pidns}/{self.vpid}/{self.start_ticks}")

    def span_id(self) -> int:
        """The process span: its 'started' span, or its lifetime span when it had none."""
        return _digest(b"otelproc span ", self.key, 8)

    def lifetime_span_id(self) -> int:
        """The lifetime span of a process whose 'started' span (the process span) went out first."""
        return _digest(b"otelproc lifetime ", self.key, 8)

    def root_trace_id(self) -> int:
        return _digest(b"otelproc trace ", self.key, 16)


@dataclass(frozen=True, slots=True)
class SpanPlace:
    """Where a process sits: the ids of its process span and that span's parent (if any)."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    root: tuple[int, int]  # (vpid, start ticks) of the first process of its part of the trace: what bounds it
    trace_state: TraceState | None = None
    remote_parent: bool = False  # the parent came from a TRACEPARENT carrier
    linked: SpanContext | None = None  # the tracked parent's process span, when the bound put it in a new trace

    def span_context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))

    def parent_context(self) -> SpanContext | None:
        if self.parent_span_id is None:
            return None
        return SpanContext(
            self.trace_id,
            self.parent_span_id,
            is_remote=self.remote_parent,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=self.trace_state,
        )


@dataclass(frozen=True, slots=True)
class TraceBound:
    """How many spans one process trace can grow to, whatever the service's lifetime and churn.

    A child joins its parent's trace while its pid is less than spans // 2 above the pid of the
    first process of that trace (that part of it, under a TRACEPARENT), and it started within
    window_ticks of that process. A process has at most two spans. Within a pid namespace the kernel
    hands out pids in increasing order until they wrap, so the offset counts at least the processes
    (and threads) started since: no count is needed, and the process itself can compute it from
    /proc. The window keeps pids that wrapped round from joining again.
    """

    spans: int
    window_ticks: int

    def joins(self, root: tuple[int, int], child: ProcessIdentity) -> bool:
        root_vpid, root_ticks = root
        return 0 < child.vpid - root_vpid < self.spans // 2 and 0 <= child.start_ticks - root_ticks < self.window_ticks


def carrier_context(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The W3C context in TRACEPARENT/TRACESTATE, or None when absent or malformed."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return context if context.is_valid else None


def fresh_carrier(
    traceparent: str | None, tracestate: str | None, parent_traceparent: str | None
) -> tuple[SpanContext | None, bool]:
    """The context a process was given in TRACEPARENT at its exec, and whether that value was
    malformed. One its tracked parent also had was inherited, not given: it does not count."""
    if not traceparent or traceparent == parent_traceparent:
        return None, False
    carrier = carrier_context(traceparent, tracestate)
    return carrier, carrier is None


def place(
    identity: ProcessIdentity, carrier: SpanContext | None, parent: SpanPlace | None, bound: TraceBound
) -> SpanPlace:
    """The rule of the module docstring, shared by the sidecar and the app-side helper."""
    span_id = identity.span_id()
    itself = (identity.vpid, identity.start_ticks)
    if carrier is not None:
        return SpanPlace(carrier.trace_id, span_id, carrier.span_id, itself, carrier.trace_state, remote_parent=True)
    if parent is None:
        return SpanPlace(identity.root_trace_id(), span_id, None, itself)
    if bound.joins(parent.root, identity):
        return SpanPlace(parent.trace_id, span_id, parent.span_id, parent.root, parent.trace_state)
    return SpanPlace(identity.root_trace_id(), span_id, None, itself, linked=parent.span_context())
