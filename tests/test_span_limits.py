"""The SDK's span limits, set in otelproc's environment, apply to its spans: attributes beyond the count
are dropped and counted on the wire, values cut at the length.

Real `otelproc run` against the real kernel and a real OTLP receiver.
"""

from __future__ import annotations

from support.cli import QUIET
from support.identity import HOST_PIDNS, expected_ids
from support.subjects import LONE_COMM, finish, proc_start_ticks, until_finished


def test_span_limits_from_the_environment_apply(sidecar, grpc_receiver, lone_python):
    """OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT and OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, applied as the SDK applies them."""
    sidecar(
        "--match",
        LONE_COMM,
        "--adopt",
        "false",
        endpoint=grpc_receiver.endpoint,
        env={**QUIET, "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "12", "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "20"},
    )
    child = until_finished(lone_python, "x" * 100)
    ticks = proc_start_ticks(child.pid)
    finish(child)
    _trace, span_id = expected_ids(HOST_PIDNS, child.pid, ticks)
    (span,) = grpc_receiver.wait_for(lambda spans: [s for s in spans if s.span_id == span_id])
    (wire,) = [
        s
        for r in grpc_receiver.requests
        for rs in r.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
        if s.span_id.hex() == span_id
    ]
    assert len(span.attributes) == 12 and wire.dropped_attributes_count > 0
    assert all(len(v) <= 20 for v in span.attributes.values() if isinstance(v, str))
    assert span.attributes["process.command_args"][-1] == "x" * 20
