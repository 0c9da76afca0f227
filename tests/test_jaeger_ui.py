"""The local stack's Jaeger UI in a real browser, as a person uses it after deploy/local/up.sh.

Headless Chromium opens http://<Jaeger>/, picks the service demo, opens a request trace, follows
the request's reference to the process trace of the worker that served it (a worker killed with
SIGKILL beforehand), unfolds the worker's process span it lands on and reads there how that worker
ended; then, the demo's uvicorn master
stopped, the master -> worker tree and how each worker ended. Everything asserted is text the page
shows. Its two screenshots go to JAEGER_UI_SCREENSHOTS (default: the test's temporary directory);
docs/images/ holds them: `JAEGER_UI_SCREENSHOTS=docs/images python3 -m pytest tests/test_jaeger_ui.py`.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import threading

import httpx
import psutil

from support.callers import serving
from support.jaeger import JaegerSpan, find_spans, path_of, request_spans, wait_for
from support.jaeger_ui import JaegerUI, SpanRow
from support.local_stack import kill_worker, lifetime_span
from support.servers import spread_requests


def test_request_links_to_its_worker_and_the_process_trace_shows_how_workers_ended(local_stack, screenshots):
    since = datetime.datetime.now(datetime.timezone.utc)
    up = local_stack.up()
    assert f"Jaeger UI         {local_stack.jaeger}/" in up
    master = local_stack.pid("demo")

    served = spread_requests(lambda: worker_of(f"{local_stack.demo}/"), want=2)  # worker pid -> requests to /
    victim = max(served, key=served.get)
    # A request it served, in Jaeger before it dies: the page below opens it.
    requests = wait_for(
        lambda: [
            r
            for r in request_spans(find_spans(local_stack.jaeger, "demo", since))
            if r.resource["process.pid"] == victim and path_of(r) == "/"
        ],
        "the victim's request spans in Jaeger",
        timeout=60,
    )
    kill_worker(local_stack, victim)
    killed = wait_for(
        lambda: lifetime_span(local_stack.jaeger, victim, since),
        "the killed worker's lifetime span in Jaeger",
        timeout=90,
    )
    # What its requests link to: its process span (docs/spans.md), the 'started' span of a worker that ran.
    victim_process = wait_for(
        lambda: process_span(local_stack.jaeger, victim, since),
        "the killed worker's process span in Jaeger",
        timeout=30,
    )
    assert victim_process.trace_id == killed.trace_id

    with JaegerUI(local_stack.jaeger, screenshots) as ui:
        ui.open()
        listed = ui.search("demo")
        assert any(r.title == "demo: uvicorn started" for r in listed), [r.title for r in listed]
        # A request the killed worker served: its trace, its server span with one reference.
        (request,) = [r for r in listed if r.trace_id == requests[0].trace_id]
        assert request.title == "demo: GET /"
        ui.open_result(request.trace_id)
        assert ui.spans()[0].name == "GET /" and ui.spans()[0].service == "demo"
        (reference,) = ui.references(ui.span("GET /"))
        assert "FOLLOWS_FROM" in reference.text and victim_process.span_id in reference.text
        ui.screenshot("request-linked-to-worker")

        # The reference opens the process trace on the worker's process span; under it, how it ended.
        assert ui.follow(reference) == killed.trace_id
        assert ui.unfold_found() == "uvicorn worker started"
        names = [s.name for s in ui.spans()]
        assert "uvicorn started" in names and "uvicorn worker" in names, names
        detail = ui.span_details("uvicorn worker", index=worker_index(ui, victim))
        assert f"process.pid\n{victim}" in detail
        assert "killed by SIGKILL" in detail

        # The master stopped: its lifetime span arrives, and the trace is the tree: each process's
        # 'started' span (its process span), its lifetime span under it, a worker's under the master's.
        os.kill(master, signal.SIGTERM)  # the demo up.sh started (its pid file)
        psutil.wait_procs([psutil.Process(master)], timeout=30)
        wait_for(lambda: lifetime_span(local_stack.jaeger, master, since), "the master's lifetime span", timeout=90)
        ui.open_trace(killed.trace_id)
        tree = ui.spans()
        assert (tree[0].name, tree[0].depth) == ("uvicorn started", 0), tree
        assert [parent_row(tree, i).name for i, s in enumerate(tree) if s.name == "uvicorn"] == ["uvicorn started"]
        workers = [i for i, s in enumerate(tree) if s.name == "uvicorn worker"]
        assert len(workers) >= 2, tree
        for i in workers:  # under its own 'started' span, under the master's; or, one that lived < 1 s, its own
            parent = parent_row(tree, i)
            assert (parent.name, parent.depth) in {("uvicorn worker started", 1), ("uvicorn started", 0)}, tree
        assert "process.exit.code\n0" in ui.span_details("uvicorn")
        ends = {}
        for index in range(len(workers)):
            detail = ui.span_details("uvicorn worker", index)
            ends[pid_in(detail)] = detail
        assert "killed by SIGKILL" in ends.pop(victim)
        for pid, detail in ends.items():
            # uvicorn's own health check may SIGKILL a worker that answers late: a true ending too
            assert f"stopped by SIGTERM from pid {master}" in detail or "killed by SIGKILL" in detail, (pid, detail)
        assert any(f"stopped by SIGTERM from pid {master}" in d for d in ends.values())
        ui.span_details("uvicorn worker", index=worker_index(ui, victim), sections=("Tags",))
        ui.screenshot("process-trace")


def process_span(query_url: str, pid: int, since: datetime.datetime) -> JaegerSpan | None:
    """Process PID's process span, once Jaeger has it: its 'started' span, or its lifetime span if it had none."""
    spans = [s for s in find_spans(query_url, "demo", since) if s.attributes.get("process.pid") == pid]
    started = [s for s in spans if s.role == "started"]
    return started[0] if started else next((s for s in spans if s.role == "lifetime"), None)


def parent_row(tree: list[SpanRow], index: int) -> SpanRow:
    """The row the index-th row of a trace page hangs from: the nearest one above it, one level up."""
    depth = tree[index].depth
    return next(s for s in reversed(tree[:index]) if s.depth == depth - 1)


def pid_in(detail: str) -> int:
    """The process.pid tag of a span's detail text."""
    return int(detail.split("process.pid\n", 1)[1].split("\n", 1)[0])


def worker_of(url: str) -> int:
    """The demo's answer: the pid of the worker that served the request."""
    return httpx.get(url, timeout=30).json()["worker"]


def worker_index(ui: JaegerUI, pid: int) -> int:
    """Which of the page's 'uvicorn worker' spans is process PID's (each opened to read its pid)."""
    count = sum(s.name == "uvicorn worker" for s in ui.spans())
    for index in range(count):
        if pid_in(ui.span_details("uvicorn worker", index)) == pid:
            return index
    raise AssertionError(f"no 'uvicorn worker' span of pid {pid} on the page")


def test_a_request_its_worker_died_in_is_red_in_its_callers_trace_and_links_to_the_worker(local_stack, screenshots):
    """The request that killed the worker, as a person finds it: in the caller's trace, a red span that says
    what killed the worker, ended at the kill, whose reference opens the worker's process trace, where the
    worker's lifetime span refers back to it. Its screenshot: request-killed-with-worker."""
    since = datetime.datetime.now(datetime.timezone.utc)
    local_stack.up()
    workers = set(spread_requests(lambda: worker_of(f"{local_stack.demo}/"), want=2))
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    answered: list[object] = []

    def call() -> None:
        try:
            answered.append(
                httpx.get(
                    f"{local_stack.demo}/slow", headers={"traceparent": f"00-{trace_id}-{caller}-01"}, timeout=120
                ).status_code
            )
        except httpx.HTTPError as exc:
            answered.append(type(exc).__name__)

    threading.Thread(target=call, daemon=True).start()
    port = httpx.URL(local_stack.demo).port
    taken = wait_for(lambda: serving(workers, port), "a worker to take the request", timeout=30)
    kill_worker(local_stack, taken)
    (request,) = wait_for(
        lambda: [s for s in find_spans(local_stack.jaeger, "demo", since) if s.trace_id == trace_id and s.kind == 2],
        "the killed request in its caller's trace",
        timeout=90,
    )
    worker = int(request.resource["process.pid"])
    killed = wait_for(lambda: lifetime_span(local_stack.jaeger, worker, since), "its worker's lifetime span", 90)
    assert request.status_message == killed.status_message and killed.status_message.startswith("killed by SIGKILL")

    with JaegerUI(local_stack.jaeger, screenshots) as ui:
        ui.open_trace(trace_id)
        (row,) = [s for s in ui.spans() if s.name == "GET /slow"]
        detail = ui.span_details("GET /slow", sections=("Tags",))
        assert "error\ntrue" in detail and f"otel.status_description\n{killed.status_message}" in detail, detail
        assert "otelproc.span.ended_by\nprocess death" in detail and "error.type\nSIGKILL" in detail
        # Its parent, the caller's span (not in this Jaeger), and its link to the worker's process span.
        (reference,) = [link for link in ui.references(row) if "FOLLOWS_FROM" in link.text]
        process = process_span(local_stack.jaeger, worker, since)
        assert process.span_id in reference.text
        ui.screenshot("request-killed-with-worker")
        assert ui.follow(reference) == killed.trace_id
        assert ui.unfold_found() == "uvicorn worker started"
        back = ui.references(ui.span("uvicorn worker", index=worker_index(ui, worker)))
        assert any(request.span_id in link.text for link in back), [link.text for link in back]
