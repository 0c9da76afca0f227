"""The bound on a process trace (docs/spans.md, "The bound on a trace"), on a real gunicorn that recycles its
workers, read back from Jaeger's API: no trace past the bound, every link resolving, and the way from the
newest worker to the master and back.

gunicorn `--max-requests 2` with two UvicornWorkers serving the demo under opentelemetry-instrument, with
otelproc's helper; the sidecar and the service both with `--trace-spans 60` (a trace spans 30 pids; each
worker's threads take pids too, so only the first workers join the master's trace, and fewer on a busy host),
so that the bound splits many workers off.
"""

from __future__ import annotations

import collections
import datetime
import os
import subprocess
from dataclasses import dataclass

import httpx

from support.jaeger import (
    DEMO,
    Backend,
    JaegerSpan,
    demo_env,
    find_spans,
    get_json,
    instrument_command,
    process_spans,
    request_spans,
    search_by_tag,
    stop_server,
    wait_for,
)
from support.ports import free_ports
from support.subjects import MATCH_TEST

BOUND = 60  # spans in a trace
REQUESTS = 100  # with --max-requests 2: thirty generations of workers or more


def key_of(span: JaegerSpan) -> tuple[int, int]:
    """(vpid, start ticks) from the process key, <boot id>/<pid namespace>/<vpid>/<start ticks>."""
    _boot, _pidns, vpid, ticks = span.attributes["otelproc.process.key"].split("/")
    return int(vpid), int(ticks)


def process_spans_by_pid(spans: list[JaegerSpan]) -> dict[int, JaegerSpan]:
    return {s.attributes["process.pid"]: s for s in process_spans(spans)}


def newest_child(spans: list[JaegerSpan], master: int) -> JaegerSpan:
    """The process span of the master's most recently started child (by its start ticks, then its pid)."""
    children = [s for s in process_spans_by_pid(spans).values() if s.attributes.get("process.parent_pid") == master]
    return max(children, key=lambda s: key_of(s)[::-1])


def assert_request_links_resolve(spans: list[JaegerSpan], served_by: dict[str, int]) -> None:
    """Each request's link leads to a stored span: its worker's process span, wherever the bound put it."""
    stored = {(s.trace_id, s.span_id): s for s in spans}
    for request in request_spans(spans):
        (target,) = [(t, s) for t, s, attrs in request.links if attrs.get("otelproc.link") == "process"]
        assert target in stored, f"request {request.span_id}'s link to {target} leads to no span"
        assert stored[target].attributes["process.pid"] == served_by[request.trace_id]


@dataclass
class Run:
    master: int
    workers: list[int]  # in the order they first answered
    served_by: dict[str, int]  # request trace id -> the pid of the worker that served it
    spans: list[JaegerSpan]  # everything of the demo in Jaeger once all ended


def recycling_gunicorn(backend: Backend, sidecar, test_python: str) -> Run:
    """gunicorn recycling its workers through REQUESTS requests; request links checked while the last workers
    run; then stopped, and everything of it read back from Jaeger."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, "--trace-spans", str(BOUND), endpoint=backend.collector_endpoint)
    (port,) = free_ports(1)
    env = demo_env(backend.collector_endpoint) | {"OTELPROC_TRACE_SPANS": str(BOUND)}
    master = subprocess.Popen(
        [
            instrument_command(),
            test_python,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "--max-requests",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "--chdir",
            str(DEMO),
            "app:app",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []  # in the order they answered
    try:

        def ask() -> int | None:
            try:
                return get_json(port, "/")[1]["worker"]
            except httpx.HTTPError:
                return None  # not listening yet, or a worker's last request cut at its recycling

        for _ in range(REQUESTS):
            worker = wait_for(ask, "a worker to answer", timeout=60)
            if worker not in workers:
                workers.append(worker)

        # While the last workers still run: their requests reach Jaeger and link to their 'started' spans.
        def all_out() -> list[JaegerSpan] | None:
            found = find_spans(backend.query_url, "demo", since)
            if len(request_spans(found)) >= REQUESTS and process_spans_by_pid(found).keys() >= set(workers):
                return found
            return None

        live = wait_for(all_out, f"{REQUESTS} requests and the process spans of {len(workers)} workers", timeout=90)
        served_by = {r.trace_id: r.resource["process.pid"] for r in request_spans(live)}
        assert_request_links_resolve(live, served_by)
    finally:
        stop_server(master)

    def all_ended() -> list[JaegerSpan] | None:
        found = find_spans(backend.query_url, "demo", since)
        ended = {s.attributes["process.pid"] for s in found if s.role == "lifetime"}
        return found if ended >= {master.pid, *workers} else None

    spans = wait_for(all_ended, "the lifetime spans of the master and every worker", timeout=90)
    return Run(master.pid, workers, served_by, spans)


def test_a_recycling_gunicorn_stays_within_the_bound_and_every_link_resolves(backend, sidecar, test_python):
    run = recycling_gunicorn(backend, sidecar, test_python)
    spans = run.spans
    # The bound holds: no process trace has more than BOUND spans.
    process_traces = collections.Counter(s.trace_id for s in spans if s.role is not None)
    assert max(process_traces.values()) <= BOUND, process_traces
    # The rule of docs/spans.md, worker by worker: in the master's trace exactly when its pid is less than
    # BOUND/2 above the master's and it started within the window (10 s) of it; otherwise a root, linked.
    by_pid = process_spans_by_pid(spans)
    top = by_pid[run.master]
    master_vpid, master_ticks = key_of(top)
    split_off = []
    for pid, span in by_pid.items():
        if span.attributes.get("process.parent_pid") != run.master:
            continue
        vpid, ticks = key_of(span)
        if 0 < vpid - master_vpid < BOUND // 2 and ticks - master_ticks < 10 * os.sysconf("SC_CLK_TCK"):
            assert (span.trace_id, span.parent_span_id) == (top.trace_id, top.span_id), f"worker {pid}"
            assert "otelproc.parent.key" not in span.attributes
        else:
            assert span.parent_span_id == "" and span.trace_id != top.trace_id, f"worker {pid} should be a root"
            assert [(t, s) for t, s, a in span.links if a.get("otelproc.link") == "parent"] == [
                (top.trace_id, top.span_id)
            ], f"worker {pid}'s link to its master"
            assert span.attributes["otelproc.parent.key"] == top.attributes["otelproc.process.key"]
            split_off.append(span)
    assert len(split_off) >= 2, f"{len(split_off)} workers split off: the bound was crossed fewer than twice"
    # Every request, after its worker ended too, still links to a stored process span.
    assert_request_links_resolve(spans, run.served_by)

    # From the newest worker to its master: its link leads to the master's process span.
    newest = newest_child(spans, run.master)
    ((link_trace, link_span),) = [(t, s) for t, s, a in newest.links if a.get("otelproc.link") == "parent"]
    assert (link_trace, link_span) == (top.trace_id, top.span_id)
    # From the master to its newest worker: the search the docs give lists the newest worker's trace.
    found = search_by_tag(backend.query_url, "demo", "otelproc.parent.key", top.attributes["otelproc.process.key"])
    found_ids = {trace["traceID"] for trace in found}
    assert newest.trace_id in found_ids and top.trace_id not in found_ids
    assert found_ids == {span.trace_id for span in split_off}


def test_a_person_gets_from_the_newest_worker_to_its_master_and_back_in_the_jaeger_ui(
    ui_backend, ui, sidecar, test_python
):
    """What docs/spans.md tells a person to click: from the newest worker's trace its reference to the master;
    from the master, a search by its key lists the newest worker's trace first."""
    run = recycling_gunicorn(ui_backend, sidecar, test_python)
    by_pid = process_spans_by_pid(run.spans)
    top, newest = by_pid[run.master], newest_child(run.spans, run.master)
    assert newest.trace_id != top.trace_id, "the newest worker should be past the bound"
    master_key = top.attributes["otelproc.process.key"]

    # From the master: Search, the service, the tag; the newest worker's trace is listed first (most recent).
    ui.open()
    results = ui.search("demo", tags=f'otelproc.parent.key="{master_key}"')
    assert results[0].trace_id == newest.trace_id, [r.title for r in results[:3]]
    assert top.trace_id not in {r.trace_id for r in results}
    ui.open_result(newest.trace_id)
    ui.screenshot("newest-worker")
    (row,) = [r for r in ui.spans() if r.span_id == newest.span_id]
    assert str(newest.attributes["process.pid"]) in ui.open_detail(row, ("Tags",)).text

    # From the newest worker back: its reference opens the master's trace, at the master's span.
    (reference,) = ui.references(row)
    assert ui.follow(reference) == top.trace_id
    assert [r.name for r in ui.spans() if r.matching] == ["gunicorn started"]
    ui.screenshot("master")
