"""Finished lifetimes to OpenTelemetry spans (ReadableSpan), under one Resource per service.

Spans are built directly as ReadableSpans with their kernel timestamps: there is
no live span object, no tracer, no sampler on this path (see bench/ for why).
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from otelproc import __version__
from otelproc.clock import iso_millis
from otelproc.redact import redact_argv
from otelproc.telemetry import Stats
from otelproc.tracker import Ended, TrackedProcess

SCOPE = InstrumentationScope("otelproc", __version__)
_CONTAINER_ID = re.compile(r"(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?")
_OK = Status(StatusCode.OK)


def host_attributes() -> dict[str, str]:
    attrs = {"host.name": socket.gethostname(), "os.type": "linux"}
    try:
        machine_id = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine_id = ""
    if machine_id:
        attrs["host.id"] = machine_id
    return attrs


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def container_id(cgroup_leaf: str) -> str | None:
    """docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope, or a bare id."""
    match = _CONTAINER_ID.fullmatch(cgroup_leaf)
    return match.group(1) if match else None


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


def exit_status(ended: Ended) -> tuple[Status, str | None]:
    """The span status and error.type for how a process ended."""
    if ended.signal:
        name = signal_name(ended.signal)
        text = f"killed by {name}" + (" (core dumped)" if ended.core_dumped else "")
        return Status(StatusCode.ERROR, text), name
    if ended.exit_code:
        return Status(StatusCode.ERROR, f"exit status {ended.exit_code}"), str(ended.exit_code)
    if ended.exit_code is None:
        return Status(StatusCode.UNSET), None  # the end was not seen (found gone by a sweep)
    return _OK, None


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
    def __init__(self, default_service: str, host: dict[str, str], redact: bool = True, stats: Stats | None = None):
        self.default_service = default_service
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

    def attributes(self, process: TrackedProcess) -> dict[str, object]:
        exe = process.exe or ""
        attrs: dict[str, object] = {
            "process.pid": process.pid,
            "process.parent_pid": process.ppid,
            "process.vpid": process.vpid,
            "process.executable.name": os.path.basename(exe) or process.comm,
            "process.user.id": process.uid,
            "process.creation.time": iso_millis(process.creation_time),
            "otelproc.comm": process.comm,
            "otelproc.process.key": process.identity.key,
            "otelproc.start.source": process.origin,
        }
        if process.owner is not None:
            attrs["process.owner"] = process.owner
        if exe:
            attrs["process.executable.path"] = exe
        if process.argv:
            argv = self.command_args(process.argv)
            attrs["process.command"] = argv[0]
            attrs["process.command_args"] = argv
        if process.cgroup:
            attrs["otelproc.cgroup"] = process.cgroup
            cid = container_id(process.cgroup)
            if cid:
                attrs["container.id"] = cid
        if process.truncated:
            attrs["otelproc.truncated"] = sorted(process.truncated)
        return attrs

    @staticmethod
    def limited(attrs: dict[str, object], count: int | None, length: int | None) -> Mapping[str, object]:
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

    def command_args(self, argv: tuple[str, ...]) -> list[str]:
        return redact_argv(argv) if self.redact else list(argv)

    def lifetime(self, ended: Ended, cgroup_path: str | None = None) -> ReadableSpan:
        process = ended.process
        attrs = self.attributes(process)
        attrs["otelproc.span"] = "lifetime"
        attrs["process.exit.time"] = iso_millis(ended.end_time)
        if cgroup_path:
            attrs["process.linux.cgroup"] = cgroup_path
        if ended.exit_code is not None:
            attrs["process.exit.code"] = ended.exit_code
        if ended.signal:
            attrs["otelproc.exit.signal"] = ended.signal
            attrs["otelproc.exit.signal_name"] = signal_name(ended.signal)
            attrs["otelproc.exit.core_dumped"] = ended.core_dumped
        status, error_type = exit_status(ended)
        if error_type:
            attrs["error.type"] = error_type
        if ended.exit_code is None and not ended.signal:
            attrs["otelproc.end.approximate"] = True
        if ended.gone_by is not None:  # it ended somewhere in this window, unseen
            attrs["otelproc.end.after"] = iso_millis(ended.end_time)
            attrs["otelproc.end.before"] = iso_millis(ended.gone_by)
        events = [
            Event(
                "exec",
                self.limited(
                    {"process.executable.path": e.exe or "", "process.command_args": self.command_args(e.argv or ())},
                    self.limits.max_event_attributes, self.limits.max_attribute_length,
                ),
                timestamp=e.time,
            )
            for e in process.execs
        ]
        link = process.link
        return ReadableSpan(
            name=process.program,
            context=link.span_context(),
            parent=link.parent_context(),
            resource=self.resource(process),
            attributes=self.limited(attrs, self.limits.max_span_attributes, self.limits.max_span_attribute_length),
            events=self.limited_events(events, process.execs_dropped),
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=process.start_time,
            end_time=max(ended.end_time, process.start_time),
            instrumentation_scope=SCOPE,
        )

    def started(self, process: TrackedProcess, cgroup_path: str | None = None) -> ReadableSpan:
        """A 1 ns child of the lifetime span, exported while the process still runs (Jaeger flags 0 ns)."""
        attrs = self.attributes(process)
        attrs["otelproc.span"] = "started"
        if cgroup_path:
            attrs["process.linux.cgroup"] = cgroup_path
        link = process.link
        context = link.span_context()
        return ReadableSpan(
            name=f"{process.program} started",
            context=SpanContext(link.trace_id, process.identity.start_span_id(), False, context.trace_flags),
            parent=context,
            resource=self.resource(process),
            attributes=self.limited(attrs, self.limits.max_span_attributes, self.limits.max_span_attribute_length),
            kind=SpanKind.INTERNAL,
            start_time=process.start_time,
            end_time=process.start_time + 1,
            instrumentation_scope=SCOPE,
        )
