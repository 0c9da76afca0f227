"""The app side's span region (otelproc/app/inflight.py), with the real SDK: what a process has not
exported yet is there, and nothing else."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags

from otelproc import region
from otelproc.app import inflight


def held() -> region.Region:
    own = inflight.current()
    assert own is not None, "this process has a region"
    return region.read_region(os.pread(own.fd, region.SIZE, 0))


@pytest.fixture
def provider():
    """A provider whose batch processor exports only when flushed, the helper's region installed on it."""
    exported = InMemorySpanExporter()
    made = TracerProvider()
    made.add_span_processor(BatchSpanProcessor(exported, schedule_delay_millis=600_000))
    inflight.install(made)
    made.exported = exported
    yield made
    made.shutdown()


def test_a_span_in_flight_is_in_the_region_with_its_start(provider):
    tracer = provider.get_tracer("shop", "2.0")
    span = tracer.start_span("GET /items/{id}", kind=SpanKind.SERVER, attributes={"http.route": "/items/{id}"})
    (recorded,) = [s for s in held().spans if s.span_id == span.get_span_context().span_id]
    assert recorded.state == region.STARTED and recorded.kind == SpanKind.SERVER.value
    assert (recorded.name, recorded.scope, recorded.scope_version) == ("GET /items/{id}", "shop", "2.0")
    assert recorded.attributes == {"http.route": "/items/{id}"}
    assert recorded.trace_id == span.get_span_context().trace_id and recorded.start_ns == span.start_time
    assert held().pid == os.getpid() and held().resource["service.name"] == provider.resource.attributes["service.name"]
    span.end()


def test_a_span_linked_to_its_process_span_says_so_and_its_child_does_not(provider):
    """otelproc, exporting it after a kill, links it as the app did (a forked worker's first span has a
    local parent of its master's and the link all the same)."""
    tracer = provider.get_tracer("pool")
    process_span = SpanContext(0x1F, 0x2F, False, TraceFlags(TraceFlags.SAMPLED))
    task = tracer.start_span("task", links=[Link(process_span, {"otelproc.link": "process"})])
    step = tracer.start_span("step", context=trace.set_span_in_context(task))
    recorded = {s.name: s for s in held().spans if s.trace_id == task.get_span_context().trace_id}
    assert (recorded["task"].linked, recorded["step"].linked) == (True, False)
    step.end()
    task.end()


def test_an_ended_span_stays_until_its_export_then_leaves(provider):
    span = provider.get_tracer("shop").start_span("work")
    span.set_attribute("result", "ok")
    span.end()
    (recorded,) = [s for s in held().spans if s.span_id == span.get_span_context().span_id]
    assert recorded.state == region.ENDED and recorded.end_ns == span.end_time
    assert recorded.attributes == {"result": "ok"}
    provider.force_flush()
    assert [s.name for s in provider.exported.get_finished_spans()] == ["work"]
    assert span.get_span_context().span_id not in [s.span_id for s in held().spans], "exported: gone from the region"


def test_a_simple_span_processor_exports_at_once_and_leaves_nothing():
    exported = InMemorySpanExporter()
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exported))
    inflight.install(made)
    span = made.get_tracer("shop").start_span("quick")
    span.end()
    assert span.get_span_context().span_id not in [s.span_id for s in held().spans]
    assert [s.name for s in exported.get_finished_spans()] == ["quick"]


def test_a_full_region_keeps_the_outermost_spans(provider):
    tracer = provider.get_tracer("shop")
    dropped_before = held().dropped
    spans = [tracer.start_span(f"span {i}") for i in range(region.SLOTS + 5)]
    read = held()
    assert {s.name for s in read.spans} == {f"span {i}" for i in range(region.SLOTS)}, "the first ones kept theirs"
    assert read.dropped - dropped_before == 5
    for span in spans:
        span.end()


def test_a_forked_child_writes_a_region_of_its_own(provider):
    parent_fd = inflight.current().fd
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own region, its own span, the parent's untouched
        try:
            own = inflight.current()
            span = provider.get_tracer("shop").start_span("in the child")
            names = [s.name for s in region.read_region(os.pread(own.fd, region.SIZE, 0)).spans]
            ok = own.pid == os.getpid() and names == ["in the child"] and span.is_recording()
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 1)
    os.waitpid(pid, 0)
    assert answer == b"1", "the child recorded its span in a region of its own"
    assert "in the child" not in [s.name for s in region.read_region(os.pread(parent_fd, region.SIZE, 0)).spans]


def test_a_servers_abort_ends_the_spans_in_flight_as_errors_that_say_so(provider):
    """gunicorn's worker timeout: the master's SIGABRT reaches the worker's handler, which exits; the
    spans in flight end as the process unwinds, and say what ended them."""
    span = provider.get_tracer("shop").start_span("GET /sleep")
    handled = []

    def exit_as_gunicorn_does(signum, frame):
        handled.append(signum)
        sys.exit(1)

    previous = signal.signal(signal.SIGABRT, exit_as_gunicorn_does)
    try:
        with pytest.raises(SystemExit):
            signal.raise_signal(signal.SIGABRT)
    finally:
        signal.signal(signal.SIGABRT, previous)
    assert handled == [signal.SIGABRT], "the server's own handler ran"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "aborted by SIGABRT", "its parent (pytest's) is no server that aborts workers"
    assert span.attributes["error.type"] == "SIGABRT"
    span.end()
    provider.force_flush()
    assert [s.name for s in provider.exported.get_finished_spans()] == ["GET /sleep"], "exported by the process"
    (kept,) = [s for s in held().spans if s.span_id == span.get_span_context().span_id]
    assert kept.state == region.ABORTED, "kept for the process span's link to it"


def test_a_handler_that_returns_ends_nothing(provider):
    """uvicorn's SIGTERM handler asks the server to stop and returns: what is in flight finishes as it would."""
    span = provider.get_tracer("shop").start_span("GET /")
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        signal.raise_signal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert span.status.status_code is StatusCode.UNSET
    span.end()


def test_the_region_can_be_left_out(monkeypatch):
    """OTELPROC_SPAN_REGION=false: nothing of this provider's spans is written to the region."""
    monkeypatch.setenv("OTELPROC_SPAN_REGION", "false")
    made = TracerProvider()
    inflight.install(made)
    span = made.get_tracer("shop").start_span("not kept")
    assert span.get_span_context().span_id not in [s.span_id for s in held().spans]
    span.end()
