"""deploy/jaeger/badger.yaml's retention: a span is found, and JAEGER_RETENTION later it is gone.

Jaeger all-in-one with badger.yaml given after it (as deploy/local/up.sh runs it), its files in the
test's directory; one span sent over OTLP/HTTP, read back from the query API. (That the traces
outlive a restart of the local stack: test_local_stack.py.)
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from support.jaeger import ALL_IN_ONE, BADGER, jaeger_binary, stop_process, wait_for
from support.ports import free_ports

TRACE_ID, SPAN_ID = "5eed0f0b1e55ed5eed0f0b1e55ed5eed", "0b1e55ed5eed0f0b"


def test_a_span_is_dropped_after_the_retention(tmp_path: Path):
    otlp_grpc, otlp_http, query_http, query_grpc = free_ports(4)
    env = {
        "PATH": "/usr/bin:/bin",
        "JAEGER_LISTEN_HOST": "127.0.0.1",
        "JAEGER_DATA_DIR": str(tmp_path / "data"),
        "JAEGER_RETENTION": "10s",
        "JAEGER_OTLP_GRPC_PORT": str(otlp_grpc),
        "JAEGER_OTLP_HTTP_PORT": str(otlp_http),
        "JAEGER_QUERY_HTTP_PORT": str(query_http),
        "JAEGER_QUERY_GRPC_PORT": str(query_grpc),
    }
    log = tmp_path / "jaeger.log"
    with log.open("wb") as out:
        jaeger = subprocess.Popen(
            [jaeger_binary(), "--config", f"file:{ALL_IN_ONE}", "--config", f"file:{BADGER}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def sent() -> bool:
            assert jaeger.poll() is None, log.read_text(errors="replace")[-3000:]
            now = time.time_ns()
            span = {
                "traceId": TRACE_ID,
                "spanId": SPAN_ID,
                "name": "kept a while",
                "kind": 1,
                "startTimeUnixNano": str(now),
                "endTimeUnixNano": str(now + 1000),
            }
            body = {
                "resourceSpans": [
                    {
                        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "retention"}}]},
                        "scopeSpans": [{"spans": [span]}],
                    }
                ]
            }
            try:
                return httpx.post(f"http://127.0.0.1:{otlp_http}/v1/traces", json=body, timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(sent, "Jaeger to take a span over OTLP/HTTP", timeout=60)
        sent_at = time.monotonic()

        def found() -> int:
            return httpx.get(f"http://127.0.0.1:{query_http}/api/v3/traces/{TRACE_ID}", timeout=5).status_code

        wait_for(lambda: found() == 200, "the span in Jaeger", timeout=30)
        assert any((tmp_path / "data").rglob("*.vlog")), "Badger's files are in JAEGER_DATA_DIR"
        wait_for(lambda: found() == 404, "the span to be dropped after JAEGER_RETENTION=10s", timeout=40)
        assert time.monotonic() - sent_at >= 9, "dropped before its retention ran out"
    finally:
        stop_process(jaeger)
