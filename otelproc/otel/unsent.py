"""Spans a stop could not deliver in time: kept beside the state file, sent first at the next start.

A stop takes at most --stop-timeout seconds, whatever the collector does. The SDK's
OTLP exporters wait out their timeout and retries (10 s, with backoff) for each
batch, and the batch processor hands them one batch after another; so the real
exporter runs on a thread of its own (Courier), and the batch processor's worker
waits for it only until the stop gives up. From then on the batch being sent and
every batch still queued are kept (CountingExporter asks Unsent.keep), not lost.

What was kept is encoded with the SDK's own OTLP encoder, one
ExportTraceServiceRequest per batch, and written to unsent-spans.pb beside the
state file (mode 0600; each request preceded by its length, 4 bytes big-endian;
at most MAX_BYTES: the newest batches beyond it are dropped, and the stop line
says how many spans). The next otelproc sends those requests as they are, through
its exporter's own client (endpoint, headers, TLS and compression as configured),
before any span of its own; what it cannot send yet is written back at its stop.
Delivery is at least once: a batch the collector took just as the stop gave up on
it arrives again.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from otelproc.plural import count
from otelproc.stats import Stats

log = logging.getLogger("otelproc")

FILE_NAME = "unsent-spans.pb"
MAX_BYTES = 16 << 20  # what a stop writes at most; a span is some 1-2 KB encoded
DRAIN_S = 1.0  # once the stop gives up, the queued batches are kept at once: no network is involved
_LENGTH = struct.Struct(">I")
_GRPC, _HTTP = "opentelemetry.exporter.otlp.proto.grpc.", "opentelemetry.exporter.otlp.proto.http."
_OTLP_MODULES = (_GRPC, _HTTP)


def path_beside(state_file: Path | None) -> Path | None:
    return None if state_file is None else state_file.parent / FILE_NAME


def spans_in(request: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    parsed = ExportTraceServiceRequest.FromString(request)
    return sum(len(scope.spans) for resource in parsed.resource_spans for scope in resource.scope_spans)


def encode(spans: Sequence[ReadableSpan]) -> bytes:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return encode_spans(spans).SerializeToString()


def can_send(exporter: SpanExporter) -> bool:
    return type(exporter).__module__.startswith(_OTLP_MODULES)


def send_encoded(exporter: SpanExporter, request: bytes) -> None:
    """Sends an encoded ExportTraceServiceRequest through the exporter's own client; raises if it was not taken.

    The SDK's exporters take spans, not requests: their clients are reached by name
    (opentelemetry-exporter-otlp 1.45), and a test sends a file through each.
    """
    module = type(exporter).__module__
    if module.startswith(_GRPC):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        assert isinstance(exporter, GrpcSpans) and exporter._client is not None  # noqa: SLF001
        exporter._client.Export(  # noqa: SLF001
            request=ExportTraceServiceRequest.FromString(request),
            metadata=exporter._headers,  # noqa: SLF001
            timeout=exporter._timeout,  # noqa: SLF001
        )
    elif module.startswith(_HTTP):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

        assert isinstance(exporter, HttpSpans)
        result = exporter._client.export(request)  # noqa: SLF001
        if not result.success:
            raise OSError(f"HTTP {result.status_code or result.error}")
    else:
        raise OSError("the exporter is not OTLP")


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests, at = [], 0
    while at < len(data):
        (length,) = _LENGTH.unpack_from(data, at)
        request = data[at + _LENGTH.size : at + _LENGTH.size + length]
        if len(request) != length:
            raise ValueError("truncated")
        spans_in(request)  # raises on what is not a request
        requests.append(request)
        at += _LENGTH.size + length
    return requests


def discard(path: Path | None) -> int | None:
    """Removes what a stop kept (`otelproc detach`); returns how many spans it held, None if nothing was kept."""
    if path is None or not path.exists():
        return None
    try:
        spans = sum(spans_in(request) for request in read_requests(path))
    except Exception:  # noqa: BLE001 -- a file that does not parse is removed all the same
        spans = 0
    path.unlink(missing_ok=True)
    return spans


def write_requests(path: Path, requests: list[bytes]) -> None:
    """Replaced whole (a temporary file renamed over it), mode 0600: spans hold command lines."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            for request in requests:
                out.write(_LENGTH.pack(len(request)) + request)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Backlog:
    """The requests a previous otelproc kept, to be sent before anything else."""

    def __init__(self, path: Path | None, drops: Counter[str]) -> None:
        self.path = path
        self.drops = drops
        self.requests: deque[bytes] = deque()
        self._lock = threading.Lock()
        if path is None or not path.exists():
            return
        try:
            self.requests.extend(read_requests(path))
        except (OSError, ValueError, struct.error) as exc:  # protobuf's DecodeError is a ValueError
            aside = path.with_name(path.name + ".unreadable")
            os.replace(path, aside)
            log.warning("%s holds no spans otelproc can read (%s); moved to %s", path, exc, aside)

    def pending(self) -> list[bytes]:
        with self._lock:
            return list(self.requests)

    def count(self) -> int:
        return sum(spans_in(r) for r in self.pending())

    def send(self, exporter: SpanExporter, after_success: bool) -> None:
        """Sends them in order, each gone once taken; stops at the first that is not.

        after_success: a batch of this otelproc just got through, so a request refused
        now is refused for itself (too big, say) and would never be taken: dropped, counted.
        """
        sent = 0
        while self.requests:
            request = self.requests[0]
            try:
                send_encoded(exporter, request)
            except Exception as exc:  # noqa: BLE001 -- grpc.RpcError, OSError, whatever the transport raises
                if not after_success:
                    log.warning(
                        "%d spans kept by the last otelproc in %s not sent yet (%s); trying again after "
                        "the next batch gets through",
                        self.count(),
                        self.path,
                        _reason(exc),
                    )
                    break
                with self._lock:
                    self.requests.popleft()
                self.drops["unsent_refused"] += spans_in(request)
                log.warning(
                    "the collector refused %d spans kept by the last otelproc (%s); dropped",
                    spans_in(request),
                    _reason(exc),
                )
                continue
            with self._lock:
                self.requests.popleft()
            sent += spans_in(request)
        if sent:
            log.info("sent %d spans the last otelproc kept in %s", sent, self.path)
        if not self.requests and self.path is not None:
            self.path.unlink(missing_ok=True)


def _reason(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    return str(details()) if callable(details) else str(exc) or type(exc).__name__


@dataclass
class _Job:
    run: Callable[[], SpanExportResult]
    done: bool = False
    result: SpanExportResult = SpanExportResult.FAILURE
    error: BaseException | None = None


class Courier(SpanExporter):
    """The real exporter on a thread of its own, the backlog first: whoever hands it a batch
    waits for it, but only until a stop gives up (give_up), so no collector can hold a stop."""

    def __init__(self, inner: SpanExporter, backlog: Backlog) -> None:
        self.inner = inner
        self.backlog = backlog
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._given_up = False
        self.sends_backlog = can_send(inner)
        if backlog.requests and self.sends_backlog:
            self._jobs.append(_Job(lambda: self._send_backlog(after_success=False)))
        elif backlog.requests:
            log.warning(
                "%d spans kept by the last otelproc wait in %s for an OTLP exporter", backlog.count(), backlog.path
            )
        threading.Thread(target=self._work, name="otelproc-export", daemon=True).start()

    def _send_backlog(self, after_success: bool) -> SpanExportResult:
        self.backlog.send(self.inner, after_success)
        return SpanExportResult.SUCCESS

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs)
                job = self._jobs.popleft()
            try:
                job.result = job.run()
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller, who decides
                job.error = exc
            with self._cond:
                job.done = True
                self._cond.notify_all()

    def _send(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS and self.backlog.requests and self.sends_backlog:
            self.backlog.send(self.inner, after_success=True)  # the collector is back
        return result

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The exporter's result; FAILURE, at once, once the stop has given up."""
        job = _Job(lambda: self._send(spans))
        with self._cond:
            if self._given_up:
                return SpanExportResult.FAILURE
            self._jobs.append(job)
            self._cond.notify_all()
            self._cond.wait_for(lambda: job.done or self._given_up)
            if not job.done:
                return SpanExportResult.FAILURE
        if job.error is not None:
            raise job.error
        return job.result

    def give_up(self) -> None:
        """Nobody waits for the exporter any more: a batch in flight, and every later one, fails at once
        (and is kept). The batch processor's shutdown then shuts the exporter down, which ends a gRPC call."""
        with self._cond:
            self._given_up = True
            self._jobs.clear()
            self._cond.notify_all()

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Unsent:
    """The spans of this otelproc that a stop could not deliver, and where they go."""

    def __init__(self, path: Path | None, backlog: Backlog) -> None:
        self.path = path
        self.backlog = backlog
        self.stopping = False
        self._kept: list[Sequence[ReadableSpan]] = []
        self._lock = threading.Lock()

    def keep(self, spans: Sequence[ReadableSpan]) -> bool:
        """Takes a batch whose export failed; only once the stop has begun (before, a failure is a drop)."""
        if not self.stopping:
            return False
        with self._lock:
            self._kept.append(list(spans))
        return True

    def finish(
        self, processor: BatchSpanProcessor, courier: Courier, stats: Stats, deadline: float, hurry: Callable[[], bool]
    ) -> str:
        """Shuts the batch processor down by deadline (time.monotonic()), sooner if hurry() says so, and
        keeps what it could not deliver; returns what became of those spans, in words, for the stop line."""
        self._stop(processor, courier, deadline, hurry)
        words, dropped = self.write()
        stuck = stats.in_flight()  # neither delivered nor kept: the SDK's worker did not let go in time
        if stuck:
            words = "; ".join(w for w in (words, f"{count(stuck, 'span')} still in the SDK's queue lost") if w)
        stats.drops["unsent"] += dropped + stuck
        return words

    def _stop(
        self, processor: BatchSpanProcessor, courier: Courier, deadline: float, hurry: Callable[[], bool]
    ) -> None:
        self.stopping = True
        shutting = threading.Thread(target=processor.shutdown, name="otelproc-stop", daemon=True)
        shutting.start()
        while shutting.is_alive() and time.monotonic() < deadline and not hurry():
            shutting.join(0.02)
        if shutting.is_alive():
            courier.give_up()
            shutting.join(DRAIN_S)

    def write(self) -> tuple[str, int]:
        """Writes the backlog not sent and what this otelproc kept; returns what happened, in words,
        and how many spans are neither kept nor delivered."""
        with self._lock:
            batches, self._kept = self._kept, []
        requests = self.backlog.pending()
        new = [encode(batch) for batch in batches if batch]
        if not requests and not new:
            return "", 0
        total = sum(spans_in(r) for r in requests) + sum(len(b) for b in batches)
        if self.path is None:
            return f"{count(total, 'span')} not delivered in time dropped (no --state-file to keep them beside)", total
        size, fitting = 0, []
        for request in requests + new:
            if size + _LENGTH.size + len(request) > MAX_BYTES:
                break
            size += _LENGTH.size + len(request)
            fitting.append(request)
        kept = sum(spans_in(r) for r in fitting)
        try:
            write_requests(self.path, fitting)
        except OSError as exc:
            return (
                f"{count(total, 'span')} not delivered in time dropped: cannot write {self.path} ({exc.strerror})",
                total,
            )
        words = f"{count(kept, 'span')} not delivered in time kept in {self.path} for the next start"
        if kept < total:
            words += f" ({total - kept} more dropped: over its {MAX_BYTES >> 20} MiB bound)"
        return words, total - kept
