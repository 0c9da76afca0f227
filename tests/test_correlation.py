"""Request spans of a traced uvicorn app and process spans of otelproc, linked both ways.

The app and `otelproc run` export to the same real OTLP receiver; everything is a
real process on the real kernel.
"""

from __future__ import annotations

import os
import signal
import subprocess

import psutil
import pytest

from support.jaeger import wait_for
from support.ports import free_port
from support.regions import unexported
from support.servers import APPS, SERVER, app_env, get_pids, process_span_of, stop, zero_code
from support.subjects import MATCH_TEST


def uvicorn_command(test_python: str, port: int, workers: int) -> list[str]:
    return [
        test_python,
        "-m",
        "uvicorn",
        "shop:app",
        "--app-dir",
        str(APPS),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def request_spans(receiver) -> list:
    return [s for s in receiver.spans if s.service == "shop" and s.kind == SERVER]


def test_request_spans_link_to_the_worker_that_served_them(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    env = app_env(grpc_receiver.endpoint, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc")
    master = subprocess.Popen(
        zero_code(uvicorn_command(test_python, port, 2)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        served = get_pids(port, "/", want=2)
        workers = sorted(served)
        grpc_receiver.wait_for(lambda _: len(request_spans(grpc_receiver)) >= sum(served.values()))
        victim = workers[0]
        # Its batch in, and let go of: a span the receiver has but the worker still holds is sent
        # again should it be killed right then (docs/correlation.md), and the count below is exact.
        wait_for(lambda: unexported(victim) == 0, "the victim to let its exported spans go", timeout=10)
        assert victim in {c.pid for c in psutil.Process(master.pid).children()}
        os.kill(victim, signal.SIGKILL)
        grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(victim))
    finally:
        stop(master)
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(w) for w in workers))

    process_spans = grpc_receiver.process_spans()
    requests = request_spans(grpc_receiver)
    assert len(requests) >= sum(served.values())
    for request in requests:
        links = [(t, s) for t, s, attrs in request.links if attrs.get("otelproc.link") == "process"]
        assert len(links) == 1, request
        process_span = process_spans.get(links[0])
        assert process_span is not None, "the link leads to a process span the sidecar exported"
        assert process_span.attributes["process.pid"] == request.resource["process.pid"]
        key = process_span.attributes["otelproc.process.key"]
        assert request.resource["otelproc.process.key"] == key == request.attributes["otelproc.process.key"]
    (killed,) = grpc_receiver.of_pid(victim)
    assert (
        killed.status_message.startswith(f"killed by SIGKILL from pid {os.getpid()} (")
        and killed.name == "uvicorn worker"
    )
    # From the process span back: its key finds exactly the requests that worker served.
    served_by_victim = [
        r for r in requests if r.resource["otelproc.process.key"] == killed.attributes["otelproc.process.key"]
    ]
    assert len(served_by_victim) == served[victim], [
        (r.span_id, r.attributes.get("otelproc.span.ended_by")) for r in served_by_victim
    ]


# The child's process span hangs from the request whether the child ends before --start-span-delay (its
# lifetime span is its process span) or after (a 'started' span, with the lifetime span under it). A
# python child with the SDK's auto-instrumentation to load takes over a second under CI's load: 0.01 s
# makes that case certain.
@pytest.mark.parametrize("start_span_delay", ["1", "0.01"])
def test_subprocess_in_a_request_is_a_child_of_the_request(sidecar, grpc_receiver, test_python, start_span_delay):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint, env={"OTELPROC_START_SPAN_DELAY": start_span_delay})
    port = free_port()
    env = app_env(grpc_receiver.endpoint, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc")
    master = subprocess.Popen(
        zero_code(uvicorn_command(test_python, port, 1)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        (child_pid,) = get_pids(port, "/spawn", want=1)
        (lifetime,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child_pid))
        (request,) = grpc_receiver.wait_for(
            lambda _: [
                r
                for r in request_spans(grpc_receiver)
                if r.attributes.get("http.target", r.attributes.get("url.path")) == "/spawn"
            ]
        )
    finally:
        stop(master)
    child = process_span_of(grpc_receiver, child_pid)
    in_trace = [
        (s.name, s.kind, s.span_id, s.parent_span_id, s.attributes.get("process.pid"))
        for s in grpc_receiver.spans
        if s.trace_id == request.trace_id
    ]
    assert (child.trace_id, child.parent_span_id) == (request.trace_id, request.span_id), (
        f"the request's trace holds {in_trace}; the child's process span: {child.name} {child.span_id}"
    )
    assert lifetime is child or (lifetime.trace_id, lifetime.parent_span_id) == (child.trace_id, child.span_id)
    assert (lifetime is child) == (start_span_delay == "1" and "otelproc.started_span" not in lifetime.attributes)
    assert lifetime.attributes["process.command_args"][1:] == ["-c", "import os; print(os.getpid())"]


def test_app_in_its_own_pid_namespace(sidecar, grpc_receiver, test_python):
    """The sidecar in the host's pid namespace, the app (set up in code, one line) in its own."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    env = app_env(grpc_receiver.endpoint, SHOP_SETUP="code")
    outer = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", *uvicorn_command(test_python, port, 2)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        served = get_pids(port, "/", want=2)
        assert all(pid < 100 for pid in served), "the answers are pids inside the app's namespace"
        grpc_receiver.wait_for(
            lambda _: len({s.attributes["otelproc.process.key"] for s in request_spans(grpc_receiver)}) >= 2
        )
    finally:
        for master in psutil.Process(outer.pid).children():
            master.send_signal(signal.SIGTERM)  # uvicorn is pid 1 in there; unshare follows it out
        stop(outer)
    grpc_receiver.wait_for(
        lambda _: len([s for s in grpc_receiver.lifetimes() if s.attributes["process.vpid"] in served]) >= 2
    )
    process_spans = grpc_receiver.process_spans()
    for request in request_spans(grpc_receiver):
        ((trace_id, span_id, _),) = request.links
        process_span = process_spans[(trace_id, span_id)]
        key = request.attributes["otelproc.process.key"]  # boot id / pid namespace / vpid / start ticks
        assert process_span.attributes["otelproc.process.key"] == key
        assert process_span.attributes["process.vpid"] == int(key.split("/")[2]) in served
        assert process_span.attributes["process.pid"] != process_span.attributes["process.vpid"]
