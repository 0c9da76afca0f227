"""The deployment end to end: demo app and otelproc -> Collector -> Jaeger, read back from Jaeger's API.

Everything is real and on loopback: Jaeger all-in-one (deploy/jaeger/all-in-one.yaml,
in memory) and a Collector running the repository's collector-config.yaml, both under
the Jaeger v2 binary that deploy/jaeger/build.sh builds (the binary is an
OpenTelemetry Collector too); `otelproc run` on the real kernel; the demo app of demo/
under uvicorn with two workers and the OpenTelemetry auto-instrumentation, with
otelproc's app-side helper switched on by OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc.
What Jaeger's query API gives back is what a person sees in Jaeger's UI.
"""

from __future__ import annotations

import datetime
import signal
import subprocess

import httpx

from support.jaeger import (
    DEMO,
    JaegerSpan,
    STATUS_ERROR,
    STATUS_OK,
    demo_env,
    find_spans,
    get_json,
    instrument_command,
    path_of,
    process_span,
    request_spans,
    search_by_tag,
    stop_server,
    wait_for,
)
from support.ports import free_ports
from support.servers import spread_requests
from support.subjects import MATCH_TEST


def test_process_and_request_spans_reach_jaeger(backend, sidecar, test_python):
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    (port,) = free_ports(1)
    master = subprocess.Popen(
        [
            instrument_command(),
            test_python,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(DEMO),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        env=demo_env(backend.collector_endpoint),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served: dict[int, list[str]] = {}  # worker pid -> the paths it served
    spawned = 0
    try:

        def worker_of_root() -> int | None:
            try:
                return get_json(port, "/")[1]["worker"]
            except httpx.ConnectError:
                return None

        for worker, count in spread_requests(worker_of_root, want=2).items():
            served[worker] = ["/"] * count
        for path in ("/work", "/spawn", "/fail"):
            status, body = get_json(port, path)
            assert status == (500 if path == "/fail" else 200), body
            served[body["worker"]].append(path)
            spawned = body.get("child", spawned)
        # Request spans leave each worker within OTEL_BSP_SCHEDULE_DELAY; a worker dies of its
        # re-raised SIGTERM, past atexit, so they are awaited in Jaeger before the app stops.
        requests = sum(len(paths) for paths in served.values())
        wait_for(
            lambda: len(request_spans(find_spans(backend.query_url, "demo", since))) >= requests,
            f"{requests} request spans in Jaeger",
            timeout=60,
        )
    finally:
        stop_server(master)
    workers = set(served)
    assert master.returncode == 0

    def process_spans_arrived() -> list[JaegerSpan]:
        spans = find_spans(backend.query_url, "demo", since)
        pids = {s.attributes.get("process.pid") for s in spans if s.role == "lifetime"}
        return spans if pids >= {master.pid, spawned, *workers} else []

    spans = wait_for(
        process_spans_arrived, "lifetime spans of the master, its workers and the spawned child", timeout=60
    )
    lifetimes = {s.attributes["process.pid"]: s for s in spans if s.role == "lifetime"}
    started = {s.attributes["process.pid"]: s for s in spans if s.role == "started"}

    # The process trace: the uvicorn master, and its two workers as its children: each process's
    # 'started' span (its process span, out while it ran) and its lifetime span under it.
    root = lifetimes[master.pid]
    assert started[master.pid].parent_span_id == "" and root.parent_span_id == started[master.pid].span_id
    assert root.name == "uvicorn"
    assert root.attributes["process.command_args"][1:4] == ["-m", "uvicorn", "app:app"]
    assert root.attributes["process.exit.code"] == 0 and root.status_code == STATUS_OK
    assert root.resource["service.name"] == "demo"
    for pid in workers:
        worker = lifetimes[pid]
        assert (started[pid].trace_id, started[pid].parent_span_id) == (root.trace_id, started[master.pid].span_id)
        assert worker.parent_span_id == started[pid].span_id
        assert worker.name == "uvicorn worker" and worker.attributes["process.parent_pid"] == master.pid
        # A graceful stop (the master's SIGTERM, handled, then re-raised) is not an error.
        assert worker.status_code == STATUS_OK
        assert worker.attributes["otelproc.exit.signal"] == signal.SIGTERM
        assert worker.attributes["otelproc.exit.sender_pid"] == master.pid
        assert worker.attributes["otelproc.exit.reason"].startswith(f"stopped by SIGTERM from pid {master.pid} (")

    # The request traces (app-side helper): every request span links to its worker's process span.
    by_id = {(s.trace_id, s.span_id): s for s in started.values()}
    requests_seen = request_spans(spans)
    assert sorted(path_of(r) for r in requests_seen) == sorted(path for paths in served.values() for path in paths)
    for request in requests_seen:
        (link,) = [(t, s) for t, s, attrs in request.links if attrs.get("otelproc.link") == "process"]
        worker_span = by_id[link]
        assert worker_span.attributes["process.pid"] == request.resource["process.pid"] in workers
        key = worker_span.attributes["otelproc.process.key"]
        assert request.attributes["otelproc.process.key"] == request.resource["otelproc.process.key"] == key
    (failed,) = [r for r in requests_seen if path_of(r) == "/fail"]
    assert failed.status_code == STATUS_ERROR

    # A subprocess started inside a request is a child span of that request.
    (spawn_request,) = [r for r in requests_seen if path_of(r) == "/spawn"]
    child = process_span(spans, spawned)  # its lifetime span, or its 'started' span if it ran past the delay
    assert (child.trace_id, child.parent_span_id) == (spawn_request.trace_id, spawn_request.span_id)
    assert lifetimes[spawned] is child or lifetimes[spawned].parent_span_id == child.span_id
    assert lifetimes[spawned].attributes["process.exit.code"] == 0

    # From a worker back to its requests: Search, service demo, tag otelproc.process.key=<the worker's>.
    worker_pid = max(workers, key=lambda pid: len(served[pid]))
    key = lifetimes[worker_pid].attributes["otelproc.process.key"]
    found = search_by_tag(backend.query_url, "demo", "otelproc.process.key", key)
    found_spans = {s["spanID"] for trace in found for s in trace["spans"]}
    assert {lifetimes[worker_pid].span_id, started[worker_pid].span_id} <= found_spans, "the worker's own process trace"
    served_here = {r.span_id for r in requests_seen if r.resource["process.pid"] == worker_pid}
    assert len(served_here) == len(served[worker_pid])
    assert served_here <= found_spans
    other_worker = {r.span_id for r in requests_seen} - served_here
    assert not other_worker & found_spans, "no request the other worker served"

    # The Collector's metrics pipeline carried metrics (the app's, every second): its debug exporter
    # logs each batch.
    def metrics_batch_logged() -> bool:
        lines = backend.collector.log.read_text(errors="replace").splitlines()
        return any("\tMetrics\t" in line and '"otelcol.component.id": "debug"' in line for line in lines)

    wait_for(metrics_batch_logged, "the Collector's debug exporter to log a metrics batch", timeout=30)
