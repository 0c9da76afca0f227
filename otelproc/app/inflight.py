"""The app side's half of the span region (otelproc/region.py): every span this process has not
exported yet, written where otelproc can still read it after a kill.

A span is written to a slot when it starts, completed when it ends, and its slot is let
go once the exporter has taken the batch it was in (ReleasingExporter wraps the exporter of
each batch or simple span processor the provider has when install runs). What the process
loses when it is killed (the spans in flight, and those ended but still queued for export)
is then in the region: otelproc exports the first as killed with the process, the second as
they ended. A process that exits cleanly has exported everything and left nothing.

Bounded: SLOTS slots. A span that finds none free takes the slot of the oldest span that
ended and waits for export (counted in the header: evicted); with none of those either, it is
not recorded (counted: unrecorded): the outermost spans, which start first, keep theirs. Cheap:
a start is one struct and one slice, the texts joined once; an end completes the slot in place;
no system call on the request path.
"""

from __future__ import annotations

import collections
import itertools
import logging
import mmap
import os
import signal
import struct
import threading
from types import FrameType
from typing import Any, Callable, Mapping, Sequence

from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

from opentelemetry.trace import Status, StatusCode

from otelproc import procfs, region
from otelproc.app.links import LINK_ATTRIBUTES
from otelproc.config import ConfigError, parse_bool
from otelproc.region import ABORTED, ENDED, FREE, HEADER, HEADER_SIZE, SLOT, SLOT_SIZE, SLOTS, STARTED, TEXT_MAX
from otelproc.servers import master_reason, program_name

log = logging.getLogger("otelproc")
_UNRECORDED_AT = HEADER.size - 12  # the header's counters: spans not recorded, ended spans evicted
_EVICTED_AT = HEADER.size - 8
_ZERO = bytes(8)
SEP = region.SEP
_U32 = struct.Struct("<I")  # a slot's sequence number, a header's counter
# What an end completes in place, after the sequence number (region.SLOT): state, kind, flags, status,
# bytes of text, attribute count, end.
_ENDING = struct.Struct("<BBBBHHQ")
((_LINK_KEY, _PROCESS_LINK),) = LINK_ATTRIBUTES.items()


def _attributes_of(span: ReadableSpan) -> Mapping[str, object]:
    """The span's attributes. The SDK's public view (a MappingProxy over BoundedAttributes) iterates in
    Python, a microsecond a span; the dict it wraps does not."""
    bounded = getattr(span, "_attributes", None)
    plain = getattr(bounded, "_dict", None)
    return plain if isinstance(plain, dict) else (span.attributes or {})


class SpanRegion:
    """This process's region: a memfd mapped shared, kept open for otelproc to open through /proc."""

    def __init__(self, resource: dict[str, object]) -> None:
        self.fd = os.memfd_create(region.REGION_NAME, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, region.SIZE)
        self.map = mmap.mmap(self.fd, region.SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.pid = os.getpid()
        self.unrecorded = 0
        self.evicted = 0
        self._free = list(range(SLOTS - 1, -1, -1))  # pop() takes the lowest: few pages are touched
        self._seq = [0] * SLOTS
        # per slot, as its start was written: name, kind, flags, bytes of text, attributes; None where
        # something was cut (an end then writes the slot whole again)
        self._written: list[tuple[str, int, int, int, int] | None] = [None] * SLOTS
        self._slot_of: dict[int, int] = {}  # span id -> slot
        self._live: dict[int, Span] = {}  # span id -> the span, while it runs
        self._aborted: set[int] = set()  # span ids in flight when the process's server aborted it
        # span ids ended and not exported yet, oldest first
        self._ended: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._lock = threading.Lock()
        encoded, _count, _cut = region.encode_texts((), resource, region.RESOURCE_MAX)
        resource_bytes = encoded[1:] if encoded.startswith(b"\0") else encoded
        start_ticks = procfs.stat(self.pid).start_ticks
        HEADER.pack_into(
            self.map,
            0,
            region.MAGIC,
            region.VERSION,
            SLOT_SIZE,
            SLOTS,
            self.pid,
            start_ticks,
            0,
            0,
            len(resource_bytes),
        )
        self.map[HEADER.size : HEADER.size + len(resource_bytes)] = resource_bytes
        _announce(self.fd)

    def _write(self, index: int, state: int, span: ReadableSpan, end_ns: int) -> None:
        """Writes the slot whole: fields, then texts, inside an odd sequence number."""
        context = span.context
        parent = span.parent
        scope = span.instrumentation_scope
        flags = region.FLAG_SAMPLED if context.trace_flags.sampled else 0
        if parent is not None:
            flags |= region.FLAG_PARENT | (region.FLAG_REMOTE_PARENT if parent.is_remote else 0)
        if any(link.attributes and link.attributes.get(_LINK_KEY) == _PROCESS_LINK for link in span.links):
            flags |= region.FLAG_LINKED
        status = span.status
        trace_state = context.trace_state
        texts = (
            span.name,
            scope.name if scope else "",
            (scope.version or "") if scope else "",
            status.description or "",
            trace_state.to_header() if trace_state else "",
        )
        data, count, cut = region.encode_texts(texts, _attributes_of(span), TEXT_MAX)
        kind = span.kind.value
        at = HEADER_SIZE + index * SLOT_SIZE
        seq = self._seq[index] + 1
        SLOT.pack_into(
            self.map,
            at,
            seq,
            state,
            kind,
            flags | (region.FLAG_CUT if cut else 0),
            status.status_code.value,
            len(data),
            count,
            end_ns,
            context.trace_id.to_bytes(16, "big"),
            context.span_id.to_bytes(8, "big"),
            parent.span_id.to_bytes(8, "big") if parent else _ZERO,
            span.start_time or 0,
        )
        self.map[at + SLOT.size : at + SLOT.size + len(data)] = data
        _U32.pack_into(self.map, at, seq + 1)  # even again: the slot is whole
        self._seq[index] = seq + 1
        self._written[index] = None if cut else (span.name, kind, flags, len(data), count)

    def _end(self, index: int, span: ReadableSpan) -> None:
        """Completes a started slot in place: the attributes added since the start (a server span's status
        code) appended, then its status and end. Written whole again where more than that changed."""
        written = self._written[index]
        attributes = _attributes_of(span)
        status = span.status
        if written is None or status.description or span.name != written[0] or len(attributes) < written[4]:
            self._write(index, ENDED, span, span.end_time or 0)
            return
        _name, kind, flags, text_len, count = written
        tail = b""
        if len(attributes) > count:
            added = region.encode_attributes(itertools.islice(attributes.items(), count, None))
            tail = (SEP + SEP.join(added)).encode("utf-8", "replace")
            if text_len + len(tail) > TEXT_MAX:
                self._write(index, ENDED, span, span.end_time or 0)
                return
            count += len(added) // 2
        at = HEADER_SIZE + index * SLOT_SIZE
        seq = self._seq[index] + 1
        _U32.pack_into(self.map, at, seq)  # odd: being written
        if tail:
            self.map[at + SLOT.size + text_len : at + SLOT.size + text_len + len(tail)] = tail
        _ENDING.pack_into(
            self.map,
            at + 4,
            ENDED,
            kind,
            flags,
            status.status_code.value,
            text_len + len(tail),
            count,
            span.end_time or 0,
        )
        _U32.pack_into(self.map, at, seq + 1)
        self._seq[index] = seq + 1

    def started(self, span: Span) -> None:
        span_id = span.context.span_id
        with self._lock:
            if self._free:
                index = self._free.pop()
            elif self._ended:  # the oldest span that ended and still waits for export gives up its slot
                index = self._slot_of.pop(self._ended.popitem(last=False)[0])
                self.evicted += 1
                _U32.pack_into(self.map, _EVICTED_AT, self.evicted & 0xFFFFFFFF)
            else:  # every slot held by a span in flight: the outermost, which started first, keep theirs
                self.unrecorded += 1
                _U32.pack_into(self.map, _UNRECORDED_AT, self.unrecorded & 0xFFFFFFFF)
                return
            self._write(index, STARTED, span, 0)
            self._slot_of[span_id] = index
            self._live[span_id] = span

    def ended(self, span: ReadableSpan, keep: bool) -> None:
        """keep: the span waits for an exporter that releases it; else its slot is free at once."""
        span_id = span.context.span_id
        with self._lock:
            self._live.pop(span_id, None)
            index = self._slot_of.get(span_id)
            if index is None:
                return  # not recorded, or exported already (a simple span processor comes first)
            if keep:
                self._end(index, span)
                self._ended[span_id] = None
            else:
                self._release(span_id)

    def release(self, spans: Sequence[ReadableSpan]) -> None:
        """The exporter has taken these: their slots are free."""
        with self._lock:
            for span in spans:
                self._release(span.context.span_id)

    def _release(self, span_id: int) -> None:
        self._ended.pop(span_id, None)
        index = self._slot_of.pop(span_id, None)
        if index is None:
            return
        if span_id in self._aborted:  # exported, and kept for the process span's link to it
            self.map[HEADER_SIZE + index * SLOT_SIZE + 4] = ABORTED
            return
        self.map[HEADER_SIZE + index * SLOT_SIZE + 4] = FREE
        self._free.append(index)

    def abort(self, sentence: str, error_type: str) -> None:
        """A signal's handler is ending the process: every span in flight ends as an error that says so."""
        with self._lock:
            live = list(self._live.values())
            self._aborted.update(self._live)
        for span in live:
            span.set_status(Status(StatusCode.ERROR, sentence))
            span.set_attribute("error.type", error_type)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


# The signals a server or a pool sends to end a worker; a handler of one that exits the process at once
# (gunicorn's SIGABRT handler, billiard's SIGTERM handler in a Celery pool process) ends what is in flight.
ENDING_SIGNALS = (signal.SIGABRT, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def ending_sentence(signum: int) -> str:
    """How a signal whose handler exits the process ended it, as far as the process can tell: without
    the sender (a handler is not told), but where the parent's server model says what that signal
    means from a master (servers.MASTER_SIGNALS), from the parent, and why."""
    name = signal.Signals(signum).name
    verb = "aborted" if signum == signal.SIGABRT else "stopped"
    parent = os.getppid()
    try:
        comm = procfs.stat(parent).comm
        program = program_name(procfs.exe(parent), procfs.cmdline(parent), comm, None)
    except OSError:
        return f"{verb} by {name}"
    reason = master_reason(program, signum)
    return f"{verb} by {name} from pid {parent} ({comm}): {reason}" if reason else f"{verb} by {name}"


def _noting_exit(handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
    def handle_then_note(signum: int, frame: FrameType | None) -> Any:
        try:
            return handler(signum, frame)
        except SystemExit:
            own = current()
            if own is not None:
                try:
                    own.abort(ending_sentence(signum), signal.Signals(signum).name)
                except Exception:  # noqa: BLE001 -- the process ends as its handler says, whatever this does
                    pass
            raise

    handle_then_note.__wrapped__ = handler  # type: ignore[attr-defined]
    return handle_then_note


_original_signal = signal.signal


def _signal(signalnum: int, handler: Any) -> Any:
    """signal.signal, with a handler of an ending signal made to end the spans in flight as errors that name
    the signal when it exits the process: they end as the process unwinds, and are exported as errors."""
    if signalnum in ENDING_SIGNALS and callable(handler):
        handler = _noting_exit(handler)
    return _original_signal(signalnum, handler)


def _announce(fd: int) -> None:
    """Tells otelproc where the region is: a thread of this process takes the name ANNOUNCE_PREFIX + fd
    (what the kernel side traces), then ends. Without otelproc nobody is told, and it costs a thread."""

    def name_this_thread() -> None:
        try:
            with open("/proc/thread-self/comm", "w") as comm:
                comm.write(f"{region.ANNOUNCE_PREFIX}{fd}")
        except OSError:
            pass

    thread = threading.Thread(target=name_this_thread, name="otelproc-region", daemon=True)
    thread.start()
    thread.join()


class ReleasingExporter(SpanExporter):
    """Wraps a span processor's exporter: what it has taken leaves the region (of this process)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self.inner.export(spans)
        finally:
            own = current()
            if own is not None:
                own.release(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class InFlightProcessor(SpanProcessor):
    """Writes each span to this process's region as it starts and as it ends."""

    def __init__(self, keep_ended: bool) -> None:
        self.keep_ended = keep_ended  # an exporter releases ended spans; without one there is nothing to wait for

    # _region is this process's: the at-fork hook replaces it in a child before any of the child's code runs.
    def on_start(self, span: Span, parent_context: object = None) -> None:
        own = _region
        if own is not None:
            own.started(span)

    def on_end(self, span: ReadableSpan) -> None:
        own = _region
        if own is not None:
            own.ended(span, self.keep_ended)


_region: SpanRegion | None = None
_provider: TracerProvider | None = None
_fork_hook = False


def current() -> SpanRegion | None:
    own = _region
    return own if own is not None and own.pid == os.getpid() else None


def _open_region() -> None:
    """A region of this process's own (at install, and in a forked child: the parent's stays the parent's)."""
    global _region
    inherited, _region = _region, None
    if inherited is not None and inherited.pid != os.getpid():
        inherited.map.close()
        os.close(inherited.fd)
    try:
        # In a forked child the SDK has already updated the resource (process-dependent detectors).
        _region = SpanRegion(dict(_provider.resource.attributes) if _provider is not None else {})
    except OSError as exc:  # no memfd (an old kernel, a seccomp profile): spans are not kept, the service runs
        log.warning("otelproc: no span region (%s); spans in flight are lost if this process is killed", exc)


def _exporting_processors(provider: TracerProvider) -> list[SpanProcessor]:
    """The provider's batch and simple span processors (the SDK keeps them in its multi-processor)."""
    active = provider._active_span_processor  # noqa: SLF001 -- the SDK has no public list of them
    return [
        p for p in getattr(active, "_span_processors", ()) if isinstance(p, (BatchSpanProcessor, SimpleSpanProcessor))
    ]


def _wrap_exporter(processor: SpanProcessor) -> bool:
    """Puts a ReleasingExporter in front of the processor's exporter; False where the SDK's layout differs."""
    holder = getattr(processor, "_batch_processor", processor)  # BatchSpanProcessor keeps it one level down
    for name in ("_exporter", "span_exporter"):
        inner = getattr(holder, name, None)
        if isinstance(inner, ReleasingExporter):
            return True
        if isinstance(inner, SpanExporter):
            setattr(holder, name, ReleasingExporter(inner))
            return True
    return False


def wanted() -> bool:
    """OTELPROC_SPAN_REGION=false leaves the region out (it costs some microseconds a span)."""
    try:
        return parse_bool(os.environ.get("OTELPROC_SPAN_REGION", "true"))
    except ConfigError:
        return True


def install(provider: TracerProvider) -> None:
    """The region for this process (and each forked child), written by a processor of the provider;
    nothing where OTELPROC_SPAN_REGION says no."""
    global _provider, _fork_hook
    if not wanted():
        return
    _provider = provider
    wrapped = [_wrap_exporter(p) for p in _exporting_processors(provider)]
    keep_ended = bool(wrapped) and all(wrapped)
    if not keep_ended:
        log.info("otelproc: spans ended but not exported are not kept for otelproc (no exporter found to release them)")
    if current() is None:
        _open_region()
    if not _fork_hook:
        os.register_at_fork(after_in_child=_open_region)
        _fork_hook = True
    signal.signal = _signal
    provider.add_span_processor(InFlightProcessor(keep_ended))


def uninstall() -> None:
    """Puts back signal.signal (the region stays: span processors cannot be removed from a provider)."""
    signal.signal = _original_signal
