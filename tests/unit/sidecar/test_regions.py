"""otelproc's side of the span regions (otelproc/sidecar/regions.py), on a real region of this process
(the app side's SpanRegion, as a traced service writes it): what a region could not keep is counted."""

from __future__ import annotations

import os

import pytest
from opentelemetry.sdk.trace import TracerProvider

from otelproc import procfs, region
from otelproc.app.inflight import SpanRegion
from otelproc.sidecar.regions import Regions
from otelproc.stats import Stats


@pytest.fixture
def written():
    """A region whose every ended span waiting for export was evicted by a span that started after it,
    and one more span not recorded (every slot then held by a span in flight)."""
    own = SpanRegion({"service.name": "shop"})
    tracer = TracerProvider().get_tracer("shop")
    for i in range(region.SLOTS):
        span = tracer.start_span(f"ended {i}")
        own.started(span)
        span.end()
        own.ended(span, keep=True)
    for i in range(region.SLOTS + 1):
        own.started(tracer.start_span(f"in flight {i}"))
    yield own
    own.close()


@pytest.mark.parametrize("died", [True, False])
def test_evicted_spans_count_only_when_the_process_died(written, died):
    """An ended span gives up its slot before its export: lost only if the process was killed before that
    export. Spans not recorded at all are lost whatever the end."""
    stats = Stats()
    regions = Regions(stats, max_open=8)
    key = (os.getpid(), procfs.stat(os.getpid()).start_ticks)
    assert regions.open(key, os.getpid(), os.getuid(), written.fd)
    left = regions.take(key, *key, died=died)
    assert left is not None and (left.evicted, left.dropped) == (region.SLOTS, 1)
    assert stats.drops["region_span_unrecorded"] == 1
    assert stats.drops["region_span_evicted"] == (region.SLOTS if died else 0)
