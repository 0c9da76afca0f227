"""What a dead process's span region becomes: its spans as the app would have exported them, those in
flight ended at the death and saying what killed them, linked both ways to the process span."""

from __future__ import annotations

import signal

from otelproc.model import SignalSent
from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.region import ENDED, STARTED, STATUS_OK, RecordedSpan, Region
from otelproc.sidecar.tracker import Tracker
from support.events import event

CALLER_TRACE, CALLER_SPAN = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7


def recorded(span_id: int, state: int, **kw) -> RecordedSpan:
    fields = dict(
        state=state,
        trace_id=CALLER_TRACE,
        span_id=span_id,
        parent_span_id=CALLER_SPAN,
        remote_parent=True,
        sampled=True,
        kind=1,
        start_ns=5_000,
        end_ns=0,
        status=0,
        name="GET /slow",
        scope="asgi",
        scope_version="0.5",
        status_description="",
        trace_state="",
        attributes={"url.path": "/slow"},
        cut=False,
    )
    fields.update(kw)
    return RecordedSpan(**fields)


def worker_death(left: Region, **ending):
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 7, ticks=7))
    tracker.handle(event("signal", 7, ticks=7, sent=SignalSent(9_000, signal.SIGKILL, 0, False, 812, "pytest")))
    ended = tracker.handle(event("exit", 7, ticks=7, time=10_000, **ending))
    ended.left = left
    return ended


def test_a_span_in_flight_ends_at_the_death_saying_what_killed_it():
    left = Region(7, 7, 0, {"service.name": "shop", "service.version": "2"}, [recorded(0xA1, STARTED)])
    builder = SpanBuilder("svc", host_attributes())
    ended = worker_death(left, exit_code=None, signal=signal.SIGKILL)
    (span,), died = builder.unfinished(ended)
    assert died == [span.context]
    assert (span.context.trace_id, span.context.span_id, span.parent.span_id) == (CALLER_TRACE, 0xA1, CALLER_SPAN)
    assert span.parent.is_remote and span.name == "GET /slow" and span.kind.value == 1
    assert (span.start_time, span.end_time) == (5_000, 10_000)
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "killed by SIGKILL from pid 812 (pytest)"
    assert span.attributes == {"url.path": "/slow", "otelproc.span.ended_by": "process death", "error.type": "SIGKILL"}
    assert dict(span.resource.attributes) == {"service.name": "shop", "service.version": "2"}
    assert (span.instrumentation_scope.name, span.instrumentation_scope.version) == ("asgi", "0.5")
    (link,) = span.links
    assert link.context == ended.process.span_place.span_context() and link.attributes == {"otelproc.link": "process"}
    lifetime = builder.lifetime(ended, None, died)
    assert [(link.context, dict(link.attributes)) for link in lifetime.links] == [
        (span.context, {"otelproc.link": "died_in_flight"})
    ]


def test_a_span_goes_out_linked_to_the_process_span_as_the_app_linked_it():
    """The first span of its trace in a forked worker has a local parent (its master's) and, as the app
    linked it, a link to the process span; its children have neither."""
    first = recorded(0xA1, ENDED, end_ns=6_000, remote_parent=False, linked=True)
    child = recorded(0xB2, ENDED, end_ns=5_500, parent_span_id=0xA1, remote_parent=False)
    builder = SpanBuilder("svc", host_attributes())
    ended = worker_death(Region(7, 7, 0, {}, [first, child]), exit_code=0)
    spans, _ = builder.unfinished(ended)
    links = {span.context.span_id: [link.context for link in span.links] for span in spans}
    assert links == {0xA1: [ended.process.span_place.span_context()], 0xB2: []}


def test_an_ended_span_goes_out_as_it_ended_and_a_clean_exit_takes_none_in_flight():
    left = Region(7, 7, 0, {}, [recorded(0xA1, STARTED), recorded(0xB2, ENDED, end_ns=6_000, status=STATUS_OK)])
    builder = SpanBuilder("svc", host_attributes())
    ended = worker_death(left, exit_code=0)
    (span,), died = builder.unfinished(ended)
    assert died == [] and span.context.span_id == 0xB2
    assert (span.end_time, span.status.status_code.name) == (6_000, "OK")
    assert "otelproc.span.ended_by" not in span.attributes and "error.type" not in span.attributes
    assert span.resource.attributes["service.name"] == "svc", "no resource in the region: the process's own"


def test_secrets_in_a_regions_attributes_are_redacted():
    left = Region(7, 7, 0, {}, [recorded(0xA1, STARTED, attributes={"url.full": "https://u:hunter2@h/?token=t0p"})])
    (span,), _ = SpanBuilder("svc", host_attributes()).unfinished(worker_death(left, exit_code=None, signal=9))
    assert "hunter2" not in span.attributes["url.full"] and "t0p" not in span.attributes["url.full"]


def test_an_unsampled_span_is_not_exported():
    left = Region(7, 7, 0, {}, [recorded(0xA1, STARTED, sampled=False)])
    assert SpanBuilder("svc", host_attributes()).unfinished(worker_death(left, exit_code=None, signal=9)) == ([], [])
