"""Jaeger for the tests: the Jaeger v2 binary deploy/jaeger/build.sh builds (an OpenTelemetry Collector
too), run on loopback as all-in-one and as the Collector of collector-config.yaml; its query API read
back as spans; the demo app's environment."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import httpx
import psutil
import pytest

from support import REPO
from support.ports import free_ports
from support.subjects import MATCH_TEST

if TYPE_CHECKING:
    from support.prometheus import Prometheus

BUILD_SCRIPT = REPO / "deploy" / "jaeger" / "build.sh"
ALL_IN_ONE = REPO / "deploy" / "jaeger" / "all-in-one.yaml"
COLLECTOR_CONFIG = REPO / "collector-config.yaml"
DEMO = REPO / "demo"
BADGER = REPO / "deploy" / "jaeger" / "badger.yaml"
MONITOR = REPO / "deploy" / "jaeger" / "monitor.yaml"
OPENSEARCH_CONFIG = REPO / "deploy" / "jaeger" / "opensearch.yaml"
SERVER, STATUS_OK, STATUS_ERROR = 2, 1, 2  # OTLP's SpanKind and StatusCode numbers
T = TypeVar("T")


def built_by(script: Path, what: str) -> str:
    """The path a cached build's `SCRIPT --print-path` prints; none is a failure that says what to run."""
    result = subprocess.run([str(script), "--print-path"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.fail(
            f"no {what}: run {script.relative_to(REPO)} (`./install.sh --test` runs it). " + result.stderr.strip(),
            pytrace=False,
        )
    return result.stdout.strip()


def jaeger_binary() -> str:
    """The binary deploy/jaeger/build.sh built and caches."""
    return built_by(BUILD_SCRIPT, "Jaeger binary")


def wait_for(check: Callable[[], T], what: str, timeout: float) -> T:
    """Polls until check() gives something true; otherwise fails naming what it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL: only for a process this test started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop_server(master: subprocess.Popen) -> None:
    """stop_process for a server this test started, then its children it left (workers,
    multiprocessing's resource tracker) once they are given time, killed."""
    # psutil.Process remembers its start time: a pid reused meanwhile is never signalled.
    children = psutil.Process(master.pid).children(recursive=True) if master.poll() is None else []
    stop_process(master)
    _, left = psutil.wait_procs(children, timeout=15)
    for child in left:
        child.kill()


class JaegerProcess:
    """`jaeger --config file:CONFIG` with a clean environment plus `env`; its output goes to `log`."""

    def __init__(self, binary: str, config: Path, env: dict[str, str], log: Path, *overlays: Path | None) -> None:
        self.log = log
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR")}
        configs = [f"--config=file:{path}" for path in (config, *overlays) if path is not None]  # merged, in order
        with log.open("wb") as out:
            self.proc = subprocess.Popen([binary, *configs], env={**base, **env}, stdout=out, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_listening(self, port: int, timeout: float = 60) -> None:
        def listening() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.log.name}: jaeger exited {self.proc.returncode}:\n{self.tail()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, f"{self.log.name} to listen on port {port}", timeout)


@dataclass(frozen=True)
class Backend:
    query_url: str  # Jaeger's query API (and UI)
    collector_endpoint: str  # the Collector's OTLP/gRPC receiver
    collector: JaegerProcess
    prometheus: "Prometheus | None" = None  # with monitor=True: scraping the Collector, Jaeger's Monitor tab on it


def running_backend(tmp_path: Path, jaeger_overlay: Path | None = None, monitor: bool = False) -> Iterator[Backend]:
    """Jaeger all-in-one (its settings merged with jaeger_overlay), then the Collector exporting to it;
    with monitor, first Prometheus (the shipped configuration and rules, every second) scraping the
    Collector's span metrics, and Jaeger's Monitor tab on it (deploy/jaeger/monitor.yaml). All stopped
    when the generator is closed."""
    from support.prometheus import config_for, running_prometheus

    binary = jaeger_binary()
    otlp_grpc, otlp_http, query_http, query_grpc, c_grpc, c_http, c_telemetry, c_metrics, p_http = free_ports(9)
    started: list[JaegerProcess] = []
    scraping = config_for(f"127.0.0.1:{c_metrics}", "1s")
    prometheus_run = running_prometheus(tmp_path, p_http, scraping) if monitor else None
    try:
        prometheus = next(prometheus_run) if prometheus_run is not None else None
        jaeger = JaegerProcess(
            binary,
            ALL_IN_ONE,
            {
                "JAEGER_LISTEN_HOST": "127.0.0.1",
                "JAEGER_OTLP_GRPC_PORT": str(otlp_grpc),
                "JAEGER_OTLP_HTTP_PORT": str(otlp_http),
                "JAEGER_QUERY_HTTP_PORT": str(query_http),
                "JAEGER_QUERY_GRPC_PORT": str(query_grpc),
                **({"PROMETHEUS_URL": prometheus.url} if prometheus else {}),
            },
            tmp_path / "jaeger.log",
            jaeger_overlay,
            MONITOR if prometheus else None,
        )
        started.append(jaeger)
        jaeger.wait_listening(query_http)
        jaeger.wait_listening(otlp_grpc)
        collector = JaegerProcess(
            binary,
            COLLECTOR_CONFIG,
            {
                "COLLECTOR_LISTEN_HOST": "127.0.0.1",
                "COLLECTOR_OTLP_GRPC_PORT": str(c_grpc),
                "COLLECTOR_OTLP_HTTP_PORT": str(c_http),
                "COLLECTOR_TELEMETRY_PORT": str(c_telemetry),
                "COLLECTOR_PROMETHEUS_PORT": str(c_metrics),
                "COLLECTOR_SPANMETRICS_INTERVAL": "1s",
                "JAEGER_OTLP_ENDPOINT": f"127.0.0.1:{otlp_grpc}",
            },
            tmp_path / "collector.log",
        )
        started.append(collector)
        collector.wait_listening(c_grpc)
        yield Backend(f"http://127.0.0.1:{query_http}", f"http://127.0.0.1:{c_grpc}", collector, prometheus)
    finally:
        for process in reversed(started):
            stop_process(process.proc)
        if prometheus_run is not None:
            prometheus_run.close()


def any_value(value: dict[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as Python (64-bit ints travel as strings)."""
    ((kind, inner),) = value.items() if value else (("", None),)
    if kind == "intValue":
        return int(inner)
    if kind == "arrayValue":
        return [any_value(v) for v in inner.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: any_value(kv["value"]) for kv in inner.get("values", [])}
    return inner


def attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: any_value(kv.get("value", {})) for kv in items or []}


@dataclass
class JaegerSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> attributes
    text: str = ""  # everything Jaeger holds of the span, to look for what must not be there

    @property
    def role(self) -> str | None:
        return self.attributes.get("otelproc.span")


def flatten(result: dict[str, Any]) -> list[JaegerSpan]:
    spans = []
    for resource_spans in result.get("resourceSpans", []):
        resource = attributes(resource_spans.get("resource", {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans", []):
            for s in scope_spans.get("spans", []):
                status = s.get("status", {})
                spans.append(
                    JaegerSpan(
                        name=s["name"],
                        trace_id=s["traceId"],
                        span_id=s["spanId"],
                        parent_span_id=s.get("parentSpanId", ""),
                        kind=s.get("kind", 0),
                        status_code=status.get("code", 0),
                        status_message=status.get("message", ""),
                        attributes=attributes(s.get("attributes")),
                        resource=resource,
                        links=[
                            (lk["traceId"], lk["spanId"], attributes(lk.get("attributes"))) for lk in s.get("links", [])
                        ],
                        events={e["name"]: attributes(e.get("attributes")) for e in s.get("events", [])},
                        text=repr(s),
                    )
                )
    return spans


def request_spans(spans: list[JaegerSpan]) -> list[JaegerSpan]:
    """The demo's server spans: one per request, each the local root of its trace."""
    return [s for s in spans if s.kind == SERVER and s.resource.get("service.name") == "demo"]


def process_spans(spans: list[JaegerSpan]) -> list[JaegerSpan]:
    """Each process's process span (docs/spans.md): what its children hang from, its 'started' span, or its
    lifetime span when it ended before that was due (--start-span-delay: no otelproc.started_span on it)."""
    return [
        s
        for s in spans
        if s.role == "started" or (s.role == "lifetime" and s.attributes.get("otelproc.started_span") is None)
    ]


def process_span(spans: list[JaegerSpan], pid: int) -> JaegerSpan:
    """The one process span of pid, from the spans of pid alone: its 'started' span, else its lifetime span
    (while a 'started' span is still on its way, the lifetime span stands for it)."""
    own = [s for s in spans if s.attributes.get("process.pid") == pid]
    (span,) = [s for s in own if s.role == "started"] or [s for s in own if s.role == "lifetime"]
    return span


def path_of(request: JaegerSpan) -> str:
    return request.attributes.get("url.path", request.attributes.get("http.target"))


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def find_spans(query_url: str, service: str, since: datetime.datetime) -> list[JaegerSpan]:
    """Every span of the service's traces, as stored (raw: no clock-skew adjustment), via /api/v3/traces."""
    now = datetime.datetime.now(datetime.timezone.utc)
    response = httpx.get(
        f"{query_url}/api/v3/traces",
        timeout=10,
        params={
            "query.service_name": service,
            "query.start_time_min": rfc3339(since - datetime.timedelta(minutes=1)),
            "query.start_time_max": rfc3339(now + datetime.timedelta(minutes=1)),
            "query.num_traces": 1000,  # 0 (the default) is refused: "search depth must be greater than 0"
            "query.raw_traces": "true",
        },
    )
    if response.status_code == 404:  # "No traces found"
        return []
    response.raise_for_status()
    return flatten(response.json()["result"])


def spans_while_up(query_url: str, service: str, since: datetime.datetime) -> list[JaegerSpan]:
    """find_spans, or none while Jaeger does not answer (it restarts, or a port-forward to it reconnects)."""
    try:
        return find_spans(query_url, service, since)
    except httpx.HTTPError:
        return []


def monitor_error_operations(query_url: str, service: str) -> tuple[set[str], dict[str, Any]]:
    """The operations of a service with errors, as Jaeger's Monitor tab asks Prometheus for them (its own
    spans, kind internal: otelproc's process spans); and the whole answer, for a failure's message."""
    errors = httpx.get(
        f"{query_url}/api/metrics/errors",
        params={"service": service, "spanKind": "internal", "groupByOperation": "true"},
        timeout=30,
    ).json()
    operations = {label["value"] for m in errors["metrics"] for label in m["labels"] if label["name"] == "operation"}
    return operations, errors


def search_by_tag(query_url: str, service: str, key: str, value: str) -> list[dict[str, Any]]:
    """The UI's Search with a tag filter (the UI's own /api/traces; API v3 has no tag filter)."""
    response = httpx.get(
        f"{query_url}/api/traces",
        timeout=10,
        params={
            "service": service,
            "tags": json.dumps({key: value}),
            "lookback": "1h",
            "limit": 1000,
        },
    )
    response.raise_for_status()
    return response.json()["data"]


def instrument_command() -> str:
    """opentelemetry-instrument beside the interpreter (PATH may hold a pyenv shim, a bash script)."""
    script = Path(sys.executable).parent / "opentelemetry-instrument"
    assert script.exists(), f"{script} is missing: install the test dependencies (./install.sh --test)"
    return str(script)


def zero_code_env(collector_endpoint: str, service: str, **extra: str) -> dict[str, str]:
    """A test app under opentelemetry-instrument with otelproc's helper: this worktree's otelproc and
    tests/apps on its path, spans over OTLP to the Collector, tracked by this session's sidecars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
    env.update(
        PYTHONPATH=f"{REPO}:{REPO / 'tests' / 'apps'}",
        OTEL_SERVICE_NAME=service,
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector_endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTELPROC_MATCH=MATCH_TEST[1],
        **extra,
    )
    return env


def demo_env(collector_endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
    env.update(
        OTEL_SERVICE_NAME="demo",
        OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector_endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTELPROC_MATCH=MATCH_TEST[1],  # the helper's view of "tracked" must be the sidecar's
    )
    return env


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30)
    return response.status_code, response.json()
