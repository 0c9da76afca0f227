"""otelproc's own telemetry: /healthz and /readyz, and its metrics over OTLP (events, spans, what it and
the kernel track, the ring buffer), under the service otelproc.

Real `otelproc run` against the real kernel and a real OTLP receiver.
"""

from __future__ import annotations

import urllib.request

import pytest

from support.ports import free_port
from support.subjects import MATCH_TEST, run_all


def test_self_telemetry_and_health(sidecar, grpc_receiver, test_python):
    port = free_port()
    side = sidecar(
        *MATCH_TEST,
        "--health-port",
        str(port),
        endpoint=grpc_receiver.endpoint,
        env={"OTEL_METRIC_EXPORT_INTERVAL": "300"},
    )
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
    run_all(test_python, 3, "metrics")
    want = {
        ("otelproc.events", (("kind", "exec"),)): 3,
        ("otelproc.events", (("kind", "exit"),)): 3,
        ("otelproc.spans", (("otelproc.span", "lifetime"),)): 3,
        ("otelproc.spans.exported", ()): 3,
    }
    points = grpc_receiver.wait_for(
        lambda _: (m := grpc_receiver.metric_points()) and all(m.get(k, 0) >= v for k, v in want.items()) and m
    )
    for name in (
        "otelproc.processes.tracked",
        "otelproc.kernel.tracked",
        "otelproc.ringbuf.used",
        "otelproc.ringbuf.size",
    ):
        assert (name, ()) in points
    assert points[("otelproc.ringbuf.size", ())] == 8 << 20
    resource = {
        kv.key: kv.value.string_value
        for kv in grpc_receiver.metric_requests[-1].resource_metrics[0].resource.attributes
    }
    assert resource["service.name"] == "otelproc"
    assert side.stop() == 0
