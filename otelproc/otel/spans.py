"""Finished lifetimes to OpenTelemetry spans (ReadableSpan), under one Resource per service.

Spans are built directly as ReadableSpans with their kernel timestamps: there is
no live span object, no tracer, no sampler on this path (see bench/ for why).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, NamedTuple, Sequence
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode

from otelproc import __version__
from otelproc.clock import iso_millis
from otelproc.config import parse_usage
from otelproc.model import TASK_COMM_LEN
from otelproc.model import DEFAULT_USAGE, OomKill, SignalSent, Usage
from otelproc.procfs import container_id
from otelproc.redact import redacted
from otelproc.otel.unfinished import links_to_the_dead, unfinished_spans
from otelproc.servers import master_reason
from otelproc.signals import DEFAULT_CLEAN, SI_KERNEL, code_name, parse_signal_set, signal_name
from otelproc.stats import Stats

if TYPE_CHECKING:  # what the sidecar's tracker hands over; the span builder needs nothing else of it
    from otelproc.sidecar.tracker import Ended, TrackedProcess

SCOPE = InstrumentationScope("otelproc", __version__)
_OK = Status(StatusCode.OK)
CLEAN_SIGNALS = parse_signal_set(DEFAULT_CLEAN)
USAGE = parse_usage(DEFAULT_USAGE)
OOM_ERROR_TYPE = "OOMKilled"
PARENT_LINK_ATTRIBUTES = BoundedAttributes(attributes={"otelproc.link": "parent"}, immutable=True)


def host_attributes() -> dict[str, str]:
    attrs = {"host.name": socket.gethostname(), "os.type": "linux"}
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    if machine_id:
        attrs["host.id"] = machine_id
    return attrs


def parent_link(process: TrackedProcess) -> list[Link]:
    """From a process the trace bound started a new trace with, to its parent's process span: the way back
    to where it came from (the way there is a search for its otelproc.parent.key, docs/spans.md)."""
    linked = process.span_place.linked
    return [] if linked is None else [Link(linked, PARENT_LINK_ATTRIBUTES)]


def parse_resource_attributes(text: str) -> tuple[dict[str, str], int]:
    """OTEL_RESOURCE_ATTRIBUTES ("k=v,k2=v%2C2"): the attributes, and how many items were malformed."""
    attrs, bad = {}, 0
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            bad += 1
            continue
        attrs[unquote(key)] = unquote(value.strip())
    return attrs, bad


def sender_phrase(sent: SignalSent | None, pid: int) -> tuple[str, str | None]:
    """Who sent a signal, for a sentence ("from pid 812 (gunicorn)", "from itself", "from the kernel"),
    and the kernel's reason where it gives one (SEGV_MAPERR); ("", None) when the sending was not seen."""
    if sent is None:
        return "", None
    if sent.from_kernel:
        return " from the kernel", None if sent.code == SI_KERNEL else code_name(sent.signal, sent.code)
    if sent.sender_pid == pid:
        return " from itself", None
    if sent.sender_pid:
        return f" from pid {sent.sender_pid} ({sent.sender_comm})", None
    return f" from {sent.sender_comm} (outside the pid namespace)", None


def sender_kind(sent: SignalSent, pid: int) -> str:
    return "kernel" if sent.from_kernel else "self" if sent.sender_pid == pid else "process"


class ExitStatus(NamedTuple):
    """How a process ended: the span's status, error.type, one sentence, and the outcome, one of six
    words that metrics count by (otelproc.exit.outcome: a sentence names pids, an exit status is one of
    256): ok, exit_status, signal, oom_kill, clean_stop, unknown."""

    status: Status
    error_type: str | None
    reason: str
    outcome: str


def exit_status(ended: Ended, clean: frozenset[int] = CLEAN_SIGNALS) -> ExitStatus:
    """How a process ended (ExitStatus).

    A signal in `clean` without a core dump is a requested, orderly stop (systemd's
    rule); the OOM killer, other signals and a non-zero exit status are errors, and so
    is an exit that follows a server's abort of its worker, whatever its status. Where
    the sender is the process's parent and its server model says what that signal
    means (servers.MASTER_SIGNALS), the sentence ends with it.
    """
    process = ended.process
    if ended.signal:
        name = signal_name(ended.signal)
        oom = ended.oom_kill()
        if oom is not None:
            why = f"memory cgroup limit, cgroup {oom.cgroup}" if oom.memcg else "system out of memory"
            return _error(f"killed by SIGKILL from the OOM killer ({why})", OOM_ERROR_TYPE, "oom_kill")
        fatal = ended.fatal_signal()
        sender, detail = sender_phrase(fatal, process.pid)
        reason = _master_reason(fatal, process)
        if ended.signal in clean and not ended.core_dumped and reason is None:
            return ExitStatus(_OK, None, f"stopped by {name}{sender}", "clean_stop")
        details = ", ".join(d for d in (detail, "core dumped" if ended.core_dumped else None) if d)
        sentence = (
            f"killed by {name}{sender}" + (f" ({details})" if details else "") + (f": {reason}" if reason else "")
        )
        return _error(sentence, name, "signal")
    abort = ended.abort()
    if abort is not None:
        reason = _master_reason(abort, process)
        sentence = f"aborted by SIGABRT{sender_phrase(abort, process.pid)[0]}" + (f": {reason}" if reason else "")
        return _error(sentence, signal_name(abort.signal), "signal")
    if ended.exit_code:
        return _error(f"exit status {ended.exit_code}", str(ended.exit_code), "exit_status")
    if ended.exit_code is None:
        return ExitStatus(Status(StatusCode.UNSET), None, "ended; its exit was not seen", "unknown")
    return ExitStatus(_OK, None, "exit status 0", "ok")


def _master_reason(sent: SignalSent | None, process: TrackedProcess) -> str | None:
    if sent is None or sent.from_kernel or not sent.sender_pid or sent.sender_pid != process.ppid:
        return None
    earlier = [s.signal for s in process.signals if s.sender_pid == sent.sender_pid and s.time < sent.time]
    return master_reason(process.parent_program, sent.signal, earlier[-1] if earlier else None)


def _error(reason: str, error_type: str, outcome: str) -> ExitStatus:
    return ExitStatus(Status(StatusCode.ERROR, reason), error_type, reason, outcome)


def signal_attributes(sent: SignalSent, pid: int) -> dict[str, AttributeValue]:
    """How a signal came and who sent it; keys relative to otelproc.exit. (span) or otelproc.signal. (events)."""
    attrs: dict[str, AttributeValue] = {"code": code_name(sent.signal, sent.code), "sender": sender_kind(sent, pid)}
    if not sent.from_kernel:
        if sent.sender_pid:
            attrs["sender_pid"] = sent.sender_pid
        attrs["sender_name"] = sent.sender_comm
    return attrs


def usage_attributes(usage: Usage, groups: frozenset[str] = USAGE) -> dict[str, AttributeValue]:
    """What the process used, named after the semantic conventions' process metrics (metric.attribute value),
    in the groups asked for (model.USAGE_GROUPS).

    Counters only when not zero: most processes never wait on a major fault or write to
    storage, and every attribute costs its export.
    """
    attrs: dict[str, AttributeValue] = {}
    if "cpu" in groups:
        attrs["process.cpu.time.user"] = usage.cpu_user_ns / 1e9
        attrs["process.cpu.time.system"] = usage.cpu_system_ns / 1e9
    if "memory" in groups:
        attrs["otelproc.memory.peak"] = usage.max_rss_bytes
    for group, key, value in (
        ("faults", "process.paging.faults.minor", usage.minor_faults),
        ("faults", "process.paging.faults.major", usage.major_faults),
        ("switches", "process.context_switches.voluntary", usage.voluntary_switches),
        ("switches", "process.context_switches.involuntary", usage.involuntary_switches),
        ("io", "process.disk.io.read", usage.disk_read_bytes),
        ("io", "process.disk.io.write", usage.disk_write_bytes),
    ):
        if value and group in groups:
            attrs[key] = value
    return attrs


def oom_attributes(oom: OomKill) -> dict[str, AttributeValue]:
    attrs: dict[str, AttributeValue] = {
        "otelproc.oom.constraint": "memcg" if oom.memcg else "system",
        "otelproc.oom.total_vm": oom.total_vm,
        "otelproc.oom.anon_rss": oom.anon_rss,
        "otelproc.oom.file_rss": oom.file_rss,
        "otelproc.oom.shmem_rss": oom.shmem_rss,
        "otelproc.oom.pgtables": oom.pgtables,
        "otelproc.oom.score_adj": oom.score_adj,
    }
    if oom.cgroup:
        attrs["otelproc.oom.cgroup"] = oom.cgroup
    return attrs


class ServiceResource(Resource):
    """A Resource whose hash is computed once: the OTLP encoder groups every span by its
    resource, and Resource.__hash__ serializes all attributes to JSON on each call."""

    def __init__(self, attributes: dict[str, str]) -> None:
        super().__init__(attributes)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other)


class SpanBuilder:
    def __init__(
        self,
        default_service: str,
        host: dict[str, str],
        redact: bool = True,
        stats: Stats | None = None,
        clean_signals: frozenset[int] = CLEAN_SIGNALS,
        usage: frozenset[str] = USAGE,
    ):
        self.default_service = default_service
        self.clean_signals = clean_signals
        self.usage = usage
        self.host = host
        self.redact = redact
        self.stats = stats or Stats()
        self.limits = SpanLimits()  # OTEL_SPAN_* and OTEL_ATTRIBUTE_* limits, read as the SDK reads them
        self._resources: dict[tuple[str | None, str | None], ServiceResource] = {}

    def resource(self, process: TrackedProcess) -> Resource:
        """One Resource per distinct (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), built once."""
        service = process.otel_env.get("OTEL_SERVICE_NAME")
        extra = process.otel_env.get("OTEL_RESOURCE_ATTRIBUTES")
        key = (service, extra)
        resource = self._resources.get(key)
        if resource is None:
            attrs: dict[str, str] = dict(self.host)
            if extra:
                parsed, bad = parse_resource_attributes(extra)
                self.stats.malformed["resource_attributes"] += bad
                attrs.update(parsed)
            attrs["service.name"] = service or attrs.get("service.name") or self.default_service
            resource = ServiceResource(attrs)
            if len(self._resources) < 4096:  # a bound against processes that invent a service each
                self._resources[key] = resource
        return resource

    def attributes(self, process: TrackedProcess, cgroup_path: str | None) -> dict[str, AttributeValue]:
        """The attributes of both spans of a process. One that would repeat another is left out (each
        costs about 2 µs per span to export): vpid when it is the pid, the comm when it is the
        executable's name, the cgroup's name when its path ends with it."""
        exe = process.exe or ""
        name = os.path.basename(exe) or process.comm
        attrs: dict[str, AttributeValue] = {
            "process.pid": process.pid,
            "process.parent_pid": process.ppid,
            "process.executable.name": name,
            "process.user.id": process.uid,
            "process.creation.time": iso_millis(process.creation_time),
            "otelproc.process.key": process.identity.key,
            "otelproc.start.source": process.origin,
        }
        if process.vpid != process.pid:
            attrs["process.vpid"] = process.vpid
        if process.comm != name[: TASK_COMM_LEN - 1]:  # the kernel cuts a task's name to 15 bytes
            attrs["otelproc.comm"] = process.comm
        if process.linked_parent is not None:
            attrs["otelproc.parent.key"] = process.linked_parent
        if process.owner is not None:
            attrs["process.owner"] = process.owner
        if exe:
            attrs["process.executable.path"] = exe
        if process.argv:
            argv = self.command_args(process.argv)
            attrs["process.command"] = argv[0]
            attrs["process.command_args"] = argv
        if cgroup_path:
            attrs["process.linux.cgroup"] = cgroup_path
        if process.cgroup:
            if not (cgroup_path and cgroup_path.endswith("/" + process.cgroup)):
                attrs["otelproc.cgroup"] = process.cgroup
            cid = container_id(process.cgroup)
            if cid:
                attrs["container.id"] = cid
        if process.truncated:
            attrs["otelproc.truncated"] = sorted(process.truncated)
        return attrs

    @staticmethod
    def limited(
        attrs: dict[str, AttributeValue], count: int | None, length: int | None
    ) -> Mapping[str, AttributeValue]:
        """The SDK's SpanLimits, as its own spans get them (BoundedAttributes counts what it drops);
        within the limits, the dict as it is: the defaults (128 attributes, any length) cost nothing."""
        if (count is None or len(attrs) <= count) and length is None:
            return attrs
        return BoundedAttributes(count, attrs, immutable=True, max_value_len=length)  # type: ignore[arg-type]

    def limited_events(self, events: list[Event], dropped_before: int) -> Sequence[Event]:
        """At most OTEL_SPAN_EVENT_COUNT_LIMIT events, the latest, with the count of those let go."""
        if self.limits.max_events is not None and len(events) + dropped_before > self.limits.max_events:
            bounded: BoundedList = BoundedList(self.limits.max_events)
            bounded.extend(events)
            bounded.dropped += dropped_before
            return bounded
        return events

    def command_args(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        return redacted(argv) if self.redact else argv

    def lifetime(
        self, ended: Ended, cgroup_path: str | None = None, died_in_flight: Sequence[SpanContext] = ()
    ) -> ReadableSpan:
        """The span of a finished lifetime. died_in_flight: the spans its process took with it
        (unfinished()), which it links to."""
        process = ended.process
        attrs = self.attributes(process, cgroup_path)
        attrs["otelproc.span"] = "lifetime"
        if process.started_span_sent:  # it was counted then: counting the others counts processes started
            attrs["otelproc.started_span"] = True
        if ended.exit_code is not None:
            attrs["process.exit.code"] = ended.exit_code
        status, error_type, reason, outcome = exit_status(ended, self.clean_signals)
        attrs["otelproc.exit.outcome"] = outcome
        if status.status_code is StatusCode.OK and ended.signal:
            attrs["otelproc.exit.reason"] = reason  # an OK status carries no description
        fatal = None
        if ended.signal:
            attrs["otelproc.exit.signal"] = ended.signal
            attrs["otelproc.exit.signal_name"] = signal_name(ended.signal)
            attrs["otelproc.exit.core_dumped"] = ended.core_dumped
            fatal = ended.fatal_signal()
            if fatal is not None:
                for key, value in signal_attributes(fatal, process.pid).items():
                    attrs["otelproc.exit.signal_code" if key == "code" else f"otelproc.exit.{key}"] = value
            if ended.oom_kill() is not None:
                attrs["otelproc.exit.sender"] = "oom-killer"
        if process.oom is not None:
            attrs.update(oom_attributes(process.oom))
        if ended.usage is not None:
            attrs.update(usage_attributes(ended.usage, self.usage))
        if error_type:
            attrs["error.type"] = error_type
        if ended.exit_code is None and not ended.signal:
            attrs["otelproc.end.approximate"] = True
        if ended.gone_by is not None:  # it ended somewhere in this window, unseen
            attrs["otelproc.end.after"] = iso_millis(ended.end_time)
            attrs["otelproc.end.before"] = iso_millis(ended.gone_by)
        if process.signals_dropped:
            attrs["otelproc.signals.dropped"] = process.signals_dropped
        events = [
            Event(
                "exec",
                self.limited(
                    {"process.executable.path": e.exe or "", "process.command_args": self.command_args(e.argv or ())},
                    self.limits.max_event_attributes,
                    self.limits.max_attribute_length,
                ),
                timestamp=e.time,
            )
            for e in process.execs
        ]
        if process.signals:
            for sent in process.signals:
                if sent is not fatal:
                    attributes: dict[str, AttributeValue] = {"otelproc.signal.name": signal_name(sent.signal)}
                    attributes.update(
                        (f"otelproc.signal.{k}", v) for k, v in signal_attributes(sent, process.pid).items()
                    )
                    events.append(Event("signal", attributes, timestamp=sent.time))
            events.sort(key=lambda event: event.timestamp)
        context, parent = self.lifetime_place(process)
        links = links_to_the_dead(died_in_flight)
        if context.span_id == process.span_place.span_id:  # it is the process span
            links[:0] = parent_link(process)
        return ReadableSpan(
            name=process.program,
            context=context,
            parent=parent,
            resource=self.resource(process),
            attributes=self.limited(attrs, self.limits.max_span_attributes, self.limits.max_span_attribute_length),
            events=self.limited_events(events, process.execs_dropped),
            links=links,
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=process.start_time,
            end_time=max(ended.end_time, process.start_time),
            instrumentation_scope=SCOPE,
        )

    def unfinished(self, ended: Ended) -> tuple[list[ReadableSpan], list[SpanContext]]:
        """The spans the process left in its span region (none if it had none), as it would have exported
        them; and the contexts of those that died in flight with it, for its lifetime span's links."""
        if ended.left is None:
            return [], []
        status, error_type, reason, _ = exit_status(ended, self.clean_signals)
        if error_type is None and ended.signal:  # a clean stop of the process is still the end of its requests
            error_type = signal_name(ended.signal)
        return unfinished_spans(
            ended.left,
            died_in_flight=ended.died(),
            dying_since=ended.dying_since() if status.status_code is StatusCode.ERROR else None,
            death_ns=ended.end_time,
            status=Status(StatusCode.ERROR, reason),
            error_type=error_type,
            process_span=ended.process.span_place.span_context(),
            fallback_resource=self.resource(ended.process),
            redact=self.redact,
        )

    @staticmethod
    def lifetime_place(process: TrackedProcess) -> tuple[SpanContext, SpanContext | None]:
        """The lifetime span's context and parent: the process span itself when no 'started' span went
        out (one span for a short-lived process), else a span of its own under the 'started' span.
        A 'started' span sent by otelproc before state file version 4 was the lifetime span's child."""
        place = process.span_place
        if not process.started_span_sent or process.legacy_started:
            return place.span_context(), place.parent_context()
        context = SpanContext(
            place.trace_id, process.identity.lifetime_span_id(), False, place.span_context().trace_flags
        )
        return context, place.span_context()

    def started(self, process: TrackedProcess, cgroup_path: str | None = None) -> ReadableSpan:
        """The process span of a process still running, placed where its lifetime span would be, so that
        its children and the requests it serves have it to point at. An instant at its start: 1 ns (Jaeger
        flags 0 ns) plus 1 ns per tracked ancestor, so that it outlasts its parent's 'started' span:
        Jaeger's UI warns of clock skew on a child span that neither fits inside its parent nor lasts longer."""
        attrs = self.attributes(process, cgroup_path)
        attrs["otelproc.span"] = "started"
        place = process.span_place
        return ReadableSpan(
            name=f"{process.program} started",
            context=place.span_context(),
            parent=place.parent_context(),
            resource=self.resource(process),
            attributes=self.limited(attrs, self.limits.max_span_attributes, self.limits.max_span_attribute_length),
            links=parent_link(process),
            kind=SpanKind.INTERNAL,
            start_time=process.start_time,
            end_time=process.start_time + 1 + process.depth,
            instrumentation_scope=SCOPE,
        )
