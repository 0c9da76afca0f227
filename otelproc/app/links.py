"""The app side: a traced service links its request spans to its own process's process span.

Runs inside the service (zero code: `opentelemetry-instrument` with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc; or one line: `otelproc.app.enable()`).
It computes its process span's context from /proc alone, by the scheme of
otelproc.identity: no call to the sidecar, and it works inside a container
that sees only its own pid namespace. The process span is the worker's 'started'
span (or, for a process that ended within the sidecar's --start-span-delay, its
lifetime span): out while the worker runs, and kept after it exits.

- Every local root span (no parent, or a remote one) gets a link to the process
  span and the attribute otelproc.process.key.
- The resource gets otelproc.process.key, so a search for that key lists the
  requests a worker served.
- subprocess children get TRACEPARENT/TRACESTATE of the current span, so a
  process started inside a request is a child span of that request.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Callable

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource, ResourceDetector
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.trace import Link
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otelproc import procfs
from otelproc.config import service_setting, service_trace_bound
from otelproc.model import parse_otel_env
from otelproc.identity import ProcessIdentity, SpanPlace, boot_id, fresh_carrier, place
from otelproc.matching import starts_tracked
from otelproc.servers import first_in_process, flush_before_pool_exit

DETECTOR_NAME = "otelproc"
LINK_ATTRIBUTES = {"otelproc.link": "process"}
_PROPAGATOR = TraceContextTextMapPropagator()


class _Proc:
    """What /proc tells about one process of our pid namespace, as the sidecar would see it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        _comm, self.ppid, self.start_ticks, _state = procfs.stat(pid)
        self.pidns = procfs.pidns(pid)
        try:
            self.otel_env = dict(parse_otel_env(procfs.environ(pid)))
        except OSError:
            self.otel_env = {}

    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(boot_id(), self.pidns, self.pid, self.start_ticks)


def process_link(pid: int | None = None) -> SpanPlace | None:
    """The context of a process's process span, or None when the sidecar would not track it.

    The sidecar tracks a process whose executable matches its list (OTELPROC_MATCH,
    else the default; OTELPROC_ALL: every process) or that descends from one (the
    rule of otelproc.matching), and bounds its traces by OTELPROC_TRACE_SPANS and
    OTELPROC_TRACE_WINDOW (else the defaults); ancestors outside our pid namespace
    are invisible here, and the sidecar does not link across namespaces either.
    """
    rules, trace_all = service_setting("match", os.environ), service_setting("trace_all", os.environ)
    chain = [_Proc(pid or os.getpid())]
    while chain[-1].ppid > 0 and len(chain) < 4096:
        try:
            parent = _Proc(chain[-1].ppid)
        except OSError:
            break
        if parent.pidns != chain[-1].pidns:
            break
        chain.append(parent)
    tracked = [starts_tracked(p.pid, rules, trace_all) for p in chain]
    if not any(tracked):
        return None
    top = max(i for i, hit in enumerate(tracked) if hit)  # everything below it is tracked too
    bound = service_trace_bound(os.environ)
    link: SpanPlace | None = None
    parent_traceparent = None
    for proc in reversed(chain[: top + 1]):
        env = proc.otel_env
        carrier, _malformed = fresh_carrier(env.get("TRACEPARENT"), env.get("TRACESTATE"), parent_traceparent)
        link = place(proc.identity(), carrier, link, bound)
        parent_traceparent = env.get("TRACEPARENT")
    return link


def process_key(pid: int | None = None) -> str:
    return _Proc(pid or os.getpid()).identity().key


_own: tuple[int, str, SpanPlace | None] = (-1, "", None)


def own_process() -> tuple[str, SpanPlace | None]:
    """This process's key and process span context, from /proc once per process (again in a forked
    child): a death reported after its parent has gone still sits where the sidecar put it."""
    global _own
    if _own[0] != os.getpid():
        _own = (os.getpid(), process_key(), process_link())
    return _own[1], _own[2]


class ProcessResourceDetector(ResourceDetector):
    """Adds otelproc.process.key, process.pid and, in a container, container.id to the resource of the process
    it runs in: the container.id otelproc gives the process's own spans, by which a Collector's k8sattributes
    finds the pod and the container of its request spans too (docs/deployment.md)."""

    def detect(self) -> Resource:
        attributes: dict[str, str | int] = {"otelproc.process.key": process_key(), "process.pid": os.getpid()}
        cid = procfs.own_container_id()
        if cid is not None:
            attributes["container.id"] = cid
        return Resource(attributes)

    def is_process_dependent(self) -> bool:
        """A forked child is another process: the SDK (1.44+) runs this detector again in it
        and updates its TracerProvider's resource, so a pre-fork worker exports as itself."""
        return True


# The SDK's add_link builds the same immutable link attributes anew for every span (3 µs of a request
# span's cost); its _add_link takes a link built once. Where an SDK has no such method, the public call.
_ADD_BUILT_LINK: Callable[[Span, Link], None] | None = getattr(Span, "_add_link", None)


def _add_link(span: Span, link: Link) -> None:
    if _ADD_BUILT_LINK is not None:
        _ADD_BUILT_LINK(span, link)
    else:
        span.add_link(link.context, link.attributes)


class ProcessLinkProcessor(SpanProcessor):
    """Links every span that is the first of its trace in this process to this process's process span.

    That is a span without a parent, with a remote one, or with one started in
    another process: a forked worker (a pool's, a pre-fork server's) inherits its
    parent's current span, so its first span has a local parent that is not ours.
    (A span whose local parent has already ended is linked too: a harmless extra.)
    `flush` (the provider's force_flush) is called where a server model ends its workers
    without an exit the SDK sees (otelproc.servers.flush_before_pool_exit).
    """

    def __init__(self, flush: Callable[[], object] | None = None) -> None:
        self._flush = flush
        self._pid = -1
        self._open: set[int] = set()  # span ids started in this process and not yet ended
        self._key = ""
        self._link: Link | None = None  # to the process span, built once per process

    def _this_process(self) -> None:
        """First use, or a forked child: another process, another process span."""
        self._pid = os.getpid()
        self._open = set()
        self._key, place = own_process()
        self._link = None
        if place is not None:
            self._link = Link(place.span_context(), BoundedAttributes(attributes=LINK_ATTRIBUTES, immutable=True))
        if self._flush is not None:
            flush_before_pool_exit(self._flush)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self._pid != os.getpid():
            self._this_process()
        self._open.add(span.context.span_id)
        parent = span.parent
        if parent is not None and not first_in_process(parent.span_id, parent.is_remote, self._open):
            return
        span.set_attribute("otelproc.process.key", self._key)
        link = self._link
        if link is not None and (parent is None or parent.span_id != link.context.span_id):
            _add_link(span, link)  # (a child needs no link to its parent)

    def on_end(self, span: ReadableSpan) -> None:
        if self._pid == os.getpid():
            self._open.discard(span.context.span_id)


_original_popen_init = subprocess.Popen.__init__


def _popen_init_with_context(self: subprocess.Popen, args: Any, *rest: Any, **kwargs: Any) -> None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    if carrier and len(rest) < 10:  # env is rest[9] when passed by position; then it is left alone
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        env["TRACEPARENT"] = carrier["traceparent"]
        if "tracestate" in carrier:
            env["TRACESTATE"] = carrier["tracestate"]
        else:
            env.pop("TRACESTATE", None)
        kwargs["env"] = env
    _original_popen_init(self, args, *rest, **kwargs)


def install(provider: TracerProvider) -> None:
    """Links root spans to the process span and passes context to subprocesses."""
    provider.add_span_processor(ProcessLinkProcessor(flush=provider.force_flush))
    subprocess.Popen.__init__ = _popen_init_with_context  # type: ignore[method-assign]


def uninstall() -> None:
    """Stops passing context to subprocesses (span processors cannot be removed from a provider)."""
    subprocess.Popen.__init__ = _original_popen_init  # type: ignore[method-assign]


def opted_in() -> bool:
    detectors = os.environ.get("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "")
    return DETECTOR_NAME in {name.strip() for name in detectors.split(",")}
