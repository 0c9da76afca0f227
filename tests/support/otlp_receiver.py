"""Real OTLP receivers for the tests: gRPC (TraceService) and HTTP/protobuf, on loopback.

They keep every span they receive, flattened with its resource, and every
request, so tests can check batching. Either can be told to refuse (gRPC
UNAVAILABLE, HTTP 503) to play a collector in trouble.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    status: str
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def service(self) -> str:
        return self.resource.get("service.name", "")


def flatten(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for resource_spans in request.resource_spans:
        resource = {kv.key: any_value(kv.value) for kv in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        status=STATUS_NAMES[s.status.code],
                        status_message=s.status.message,
                        attributes={kv.key: any_value(kv.value) for kv in s.attributes},
                        resource=resource,
                        events=[
                            (e.name, e.time_unix_nano, {kv.key: any_value(kv.value) for kv in e.attributes})
                            for e in s.events
                        ],
                        links=[
                            (
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                {kv.key: any_value(kv.value) for kv in link.attributes},
                            )
                            for link in s.links
                        ],
                    )
                )
    return out


class _Store:
    def __init__(self) -> None:
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.spans: list[ReceivedSpan] = []
        self.refusing = False
        self.refused = 0  # requests turned away while refusing
        # Cleared: a Collector that has taken each batch but not answered yet (until set, or 60 s).
        self.answering = threading.Event()
        self.answering.set()
        self._cond = threading.Condition()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._cond:
            self.requests.append(request)
            self.spans.extend(flatten(request))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], Any], timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self.spans)
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [(s.name, s.attributes.get("process.pid")) for s in self.spans[-30:]]
                    raise AssertionError(f"timed out waiting for spans; last received: {names}")
                self._cond.wait(min(left, 0.2))

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        with self._cond:
            self.metric_requests.append(request)
            self._cond.notify_all()

    def metric_points(self) -> dict[tuple[str, tuple[tuple[str, Any], ...]], float]:
        """The latest value of every metric data point: (name, sorted attributes) -> value."""
        latest: dict[tuple[str, tuple[tuple[str, Any], ...]], float] = {}
        with self._cond:
            for request in self.metric_requests:
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            data = metric.sum if metric.HasField("sum") else metric.gauge
                            for point in data.data_points:
                                attrs = tuple(sorted((kv.key, any_value(kv.value)) for kv in point.attributes))
                                value = point.as_int if point.HasField("as_int") else point.as_double
                                latest[(metric.name, attrs)] = value
        return latest

    def lifetimes(self) -> list[ReceivedSpan]:
        with self._cond:
            return [s for s in self.spans if s.attributes.get("otelproc.span") == "lifetime"]

    def process_spans(self) -> dict[tuple[str, str], ReceivedSpan]:
        """Each process's process span by (trace id, span id): what its children hang from and its requests
        link to (docs/spans.md): its 'started' span, or its lifetime span when it had none."""
        with self._cond:
            first: dict[str, ReceivedSpan] = {}
            for s in self.spans:
                role, key = s.attributes.get("otelproc.span"), s.attributes.get("otelproc.process.key")
                if role == "started" or (role == "lifetime" and key not in first):
                    first[key] = s
            return {(s.trace_id, s.span_id): s for s in first.values()}

    def of_pid(self, pid: int, role: str = "lifetime") -> list[ReceivedSpan]:
        with self._cond:
            return [
                s
                for s in self.spans
                if s.attributes.get("process.pid") == pid and s.attributes.get("otelproc.span") == role
            ]


class GrpcReceiver(_Store):
    """An OTLP/gRPC TraceService on 127.0.0.1; endpoint is what a client dials."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self._server: grpc.Server | None = None
        self.start()

    def start(self) -> None:
        store = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
                if store.refusing:
                    store.refused += 1
                    context.abort(grpc.StatusCode.UNAVAILABLE, "refusing, as the test asked")
                store.add(request)
                store.answering.wait(60)
                return trace_service_pb2.ExportTraceServiceResponse()

        class MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request, context):  # noqa: N802 (the gRPC method's name)
                if store.refusing:
                    context.abort(grpc.StatusCode.UNAVAILABLE, "refusing, as the test asked")
                store.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsServicer(), self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


class HttpReceiver(_Store):
    """An OTLP/HTTP receiver (POST /v1/traces and /v1/metrics, protobuf) on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__()
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, reply = 200, b""
                if store.refusing:
                    store.refused += 1
                    status = 503
                elif self.headers.get("Content-Type") != "application/x-protobuf":
                    status = 415
                elif self.path == "/v1/traces":
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    store.add(request)
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    metrics = metrics_service_pb2.ExportMetricsServiceRequest()
                    metrics.ParseFromString(body)
                    store.add_metrics(metrics)
                    reply = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                else:
                    status = 404
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
