"""Running services read right in Jaeger: the live process tree, and request links that lead somewhere.

Everything is real and on loopback: Jaeger with its UI (jaeger-ui v1.76.0, served from `assets_path`)
and the Collector of tests/test_jaeger_e2e.py; `otelproc run` on the real kernel; a uvicorn service
with two workers (the demo app) and a gunicorn service with two sync workers, both started from an
untracked parent (pytest) under `opentelemetry-instrument` with otelproc's app-side helper; and headless
Chromium reading the UI as a person would. Checked while the services run, again after a worker of each
is SIGKILLed and respawned, and once more after they stop:

- the process trace is the tree master -> workers, every span's parent present (no "invalid parent
  span IDs" warning on any span, in the UI and in the API that feeds it);
- each process span says what the process is (program, pid, command) and since when;
- each request's process link opens a span that exists;
- the dead worker and its successor are in their places, the dead one with how it ended.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import httpx
import psutil

from support import REPO
from support.jaeger import (
    DEMO,
    SERVER,
    JaegerSpan,
    demo_env,
    find_spans,
    get_json,
    instrument_command,
    search_by_tag,
    stop_server,
    wait_for,
)
from support.jaeger_ui import JaegerUI
from support.ports import free_ports
from support.servers import APPS, app_env, ask
from support.subjects import MATCH_TEST

PROCESS_TAGS = ("process.pid", "process.command_args", "process.creation.time", "otelproc.process.key")
# The tree within the trace bound (docs/spans.md): set wide for the sidecar and the services alike, so that
# the respawned workers keep their places whatever the host does meanwhile (tests/test_trace_bound.py: past it).
WHOLE_TREE = {"OTELPROC_TRACE_SPANS": "100000", "OTELPROC_TRACE_WINDOW": "3600"}


@dataclass(eq=False)
class Service:
    name: str  # service.name of its spans
    master: subprocess.Popen
    port: int

    def respawned(self, killed: int) -> set[int] | None:
        """Its two workers, once the killed one is replaced."""
        workers = {c.pid for c in psutil.Process(self.master.pid).children() if not is_helper(c)}
        return workers if len(workers) == 2 and killed not in workers else None


def family(master: int) -> set[int]:
    """The master and every process under it now, helpers included: each has a span in the trace."""
    return {master} | {c.pid for c in psutil.Process(master).children(recursive=True)}


def is_helper(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker, which uvicorn's spawn start method runs beside its workers
    (or a child gone meanwhile)."""
    try:
        return any("resource_tracker" in arg for arg in process.cmdline())
    except psutil.Error:
        return True


def uvicorn_answers(port: int, want: set[int] | None = None, count: int = 2, timeout: float = 60) -> set[int]:
    """GET / until `count` workers (or every one of `want`) answered; the pids that answered."""
    seen: set[int] = set()

    def enough() -> bool:
        try:
            _, body = get_json(port, "/")
        except httpx.HTTPError:
            return False
        seen.add(body["worker"])
        return want <= seen if want else len(seen) >= count

    wait_for(enough, f"uvicorn workers {want or count} to answer", timeout)
    return seen


def process_trace(query_url: str, trace_id: str) -> list[dict[str, Any]]:
    """A trace as the UI gets it (/api/traces/<id>: adjusted, each span with the UI's warnings)."""
    response = httpx.get(f"{query_url}/api/traces/{trace_id}", timeout=10)
    response.raise_for_status()
    (trace,) = response.json()["data"]
    for span in trace["spans"]:
        span["tagmap"] = {t["key"]: t["value"] for t in span["tags"]}
        span["service"] = trace["processes"][span["processID"]]["serviceName"]
    return trace["spans"]


def parent_of(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def check_whole(spans: list[dict[str, Any]]) -> None:
    """Every parent present, no warning on any span, every span says what its process is and since when."""
    ids = {s["spanID"] for s in spans}
    for span in spans:
        assert parent_of(span) in ids | {None}, f"{span['operationName']}: parent {parent_of(span)} is not in its trace"
        assert not span.get("warnings"), f"{span['operationName']}: {span['warnings']}"
        assert all(tag in span["tagmap"] for tag in PROCESS_TAGS), span["tagmap"]


def by_pid(spans: list[dict[str, Any]], role: str) -> dict[int, dict[str, Any]]:
    return {s["tagmap"]["process.pid"]: s for s in spans if s["tagmap"].get("otelproc.span") == role}


def the_trace_of(query_url: str, service: str, master: int, since: datetime.datetime, want: set[int]) -> str:
    """The trace id of the master's process trace, once the 'started' spans of `want` are in it."""

    def arrived() -> str | None:
        spans = find_spans(query_url, service, since)
        roots = [s for s in spans if s.attributes.get("process.pid") == master and s.role == "started"]
        if not roots:
            return None
        trace = process_trace(query_url, roots[0].trace_id)
        return roots[0].trace_id if want <= set(by_pid(trace, "started")) else None

    return wait_for(arrived, f"the {service} process trace with the 'started' spans of {sorted(want)}", timeout=90)


def check_tree(query_url: str, trace_id: str, master: int, alive: set[int], dead: set[int]) -> list[dict[str, Any]]:
    """master -> workers: each worker's 'started' span under the master's, a dead one's lifetime span
    under its own 'started' span, with how it ended."""
    spans = process_trace(query_url, trace_id)
    check_whole(spans)
    started, lifetimes = by_pid(spans, "started"), by_pid(spans, "lifetime")
    root = started[master]
    assert parent_of(root) is None
    for pid in alive | dead:
        assert parent_of(started[pid]) == root["spanID"], f"worker {pid} under its master"
        assert started[pid]["tagmap"]["process.parent_pid"] == master
    for pid in dead:
        assert parent_of(lifetimes[pid]) == started[pid]["spanID"]
        assert lifetimes[pid]["tagmap"]["otelproc.exit.signal_name"] == "SIGKILL"
        assert any(
            t["key"] == "otel.status_description" and t["value"].startswith("killed by SIGKILL")
            for t in lifetimes[pid]["tags"]
        )
    assert not set(lifetimes) & alive
    return spans


def process_link(request: JaegerSpan) -> tuple[str, str] | None:
    links = [(t, s) for t, s, a in request.links if a.get("otelproc.link") == "process"]
    return links[0] if len(links) == 1 else None


def linked_requests(query_url: str, service: Service, since: datetime.datetime, pids: set[int]) -> list[JaegerSpan]:
    """The request spans served by `pids`, once each of them served one; each with its process link."""

    def arrived() -> list[JaegerSpan]:
        spans = [
            s
            for s in find_spans(query_url, service.name, since)
            if s.kind == SERVER and s.resource.get("process.pid") in pids
        ]
        return spans if {s.resource["process.pid"] for s in spans} == pids else []

    requests = wait_for(arrived, f"request spans of {service.name} workers {sorted(pids)}", timeout=60)
    assert all(process_link(r) for r in requests), "each request has one process link"
    return requests


def check_links(query_url: str, requests: list[JaegerSpan]) -> None:
    """Each request's process link names a span that exists: its worker's process span."""
    assert requests
    for request in requests:
        trace_id, span_id = process_link(request)
        linked = {s["spanID"]: s for s in process_trace(query_url, trace_id)}
        assert span_id in linked, f"{request.name}: its process link leads to no span"
        assert linked[span_id]["tagmap"]["process.pid"] == request.resource["process.pid"]
        assert linked[span_id]["tagmap"]["otelproc.process.key"] == request.resource["otelproc.process.key"]


def check_search(query_url: str, service: Service, worker: int, requests: list[JaegerSpan]) -> None:
    """Search by the worker's otelproc.process.key (the UI's tag search): its process span and its requests."""
    spans = [
        s
        for s in find_spans(
            query_url, service.name, datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
        )
        if s.attributes.get("process.pid") == worker
    ]
    key = spans[0].attributes["otelproc.process.key"]
    found = {
        s["spanID"]
        for trace in search_by_tag(query_url, service.name, "otelproc.process.key", key)
        for s in trace["spans"]
    }
    assert {s.span_id for s in spans} <= found, "the worker's own process spans"
    served = {r.span_id for r in requests if r.resource["process.pid"] == worker}
    assert served and served <= found, "the requests it served"
    assert not {r.span_id for r in requests} - served & found, "none another worker served"


def check_ui(ui: JaegerUI, trace_id: str, spans: list[dict[str, Any]], shot: str) -> None:
    """The UI draws the same tree (each row's ancestors, from its indent guides) and shows no warning."""
    ui.open_trace(trace_id)
    rows = ui.spans()
    assert len(rows) == len(spans), [r.name for r in rows]
    by_id = {s["spanID"]: s for s in spans}
    expected = {}
    for span in spans:
        chain, parent = [], parent_of(span)
        while parent in by_id:  # (a missing parent, too, is the API's to say)
            chain.append(parent)
            parent = parent_of(by_id[parent])
        expected.setdefault((span["service"], span["operationName"]), []).append(sorted(chain))
    for row in rows:
        assert sorted(a for a in row.ancestors if a in by_id) in expected[(row.service, row.name)], row
    ui.screenshot(shot, whole_trace=True)
    assert ui.warnings() == []


def check_link_in_ui(ui: JaegerUI, request: JaegerSpan) -> None:
    """Following a request's link in the UI opens its worker's process trace on an existing span."""
    ui.open_trace(request.trace_id, find=request.span_id)
    (found,) = [s for s in ui.spans() if s.matching]
    (link,) = ui.references(found)
    trace_id, span_id = process_link(request)
    href = link.get_attribute("href")
    assert f"/trace/{trace_id}" in href and span_id in href
    assert ui.follow(link) == trace_id
    (found,) = [s for s in ui.spans() if s.matching]
    assert found.name.endswith(" started"), f"the worker's 'started' span: {found}"


def test_running_services_read_as_a_live_tree(ui_backend, ui, sidecar, test_python):
    since = datetime.datetime.now(datetime.timezone.utc)
    url = ui_backend.query_url
    sidecar(*MATCH_TEST, endpoint=ui_backend.collector_endpoint, env=WHOLE_TREE)
    uvicorn_port, gunicorn_port = free_ports(2)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uvicorn = Service(
        "demo",
        subprocess.Popen(
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
                str(uvicorn_port),
                "--workers",
                "2",
            ],
            env={**demo_env(ui_backend.collector_endpoint), "PYTHONPATH": str(REPO), **WHOLE_TREE},
            **quiet,
        ),
        uvicorn_port,
    )
    gunicorn = Service(
        "shop",
        subprocess.Popen(
            [
                instrument_command(),
                test_python,
                "-m",
                "gunicorn",
                "-w",
                "2",
                "-k",
                "sync",
                "-b",
                f"127.0.0.1:{gunicorn_port}",
                "--chdir",
                str(APPS),
                "sync_shop:app",
            ],
            env=app_env(
                ui_backend.collector_endpoint,
                OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc",
                PYTHONPATH=f"{REPO}:{APPS}",
                **WHOLE_TREE,
            ),
            **quiet,
        ),
        gunicorn_port,
    )
    services = (uvicorn, gunicorn)
    try:
        first = {uvicorn: uvicorn_answers(uvicorn.port), gunicorn: set(ask(gunicorn.port, 6, 2).values())}
        # Every process of the service, not only the workers: the UI is compared with the API's trace, so
        # no span may still be on its way (multiprocessing's resource tracker starts beside uvicorn's workers).
        traces = {s: the_trace_of(url, s.name, s.master.pid, since, family(s.master.pid)) for s in services}

        # While they run: the live tree, links that resolve, in the API and in the UI.
        for service in services:
            check_ui(ui, traces[service], process_trace(url, traces[service]), f"{service.name}-running")
            check_tree(url, traces[service], service.master.pid, first[service], set())
        for service in services:
            requests = linked_requests(url, service, since, first[service])
            check_links(url, requests)
            check_link_in_ui(ui, requests[0])
            check_search(url, service, min(first[service]), requests)

        # A worker of each is SIGKILLed; its master starts another.
        killed = {s: min(first[s]) for s in services}
        for service in services:
            os.kill(killed[service], signal.SIGKILL)
        now = {
            s: wait_for(lambda s=s: s.respawned(killed[s]), f"{s.name} to respawn a worker", timeout=60)
            for s in services
        }
        for service in services:
            the_trace_of(url, service.name, service.master.pid, since, family(service.master.pid))
            wait_for(
                lambda s=service: killed[s] in by_pid(process_trace(url, traces[s]), "lifetime"),
                f"the killed {service.name} worker's lifetime span",
                timeout=60,
            )
            spans = check_tree(url, traces[service], service.master.pid, now[service], {killed[service]})
            check_ui(ui, traces[service], spans, f"{service.name}-respawned")
        uvicorn_answers(uvicorn.port, want=now[uvicorn] - first[uvicorn])
        ask(gunicorn.port, 10, 2)
        for service in services:
            check_links(url, linked_requests(url, service, since, now[service] - first[service]))
    finally:
        for service in services:
            stop_server(service.master)

    # Stopped: the same tree, completed into lifetime spans, still every parent present.
    for service in services:
        everyone = {service.master.pid} | first[service] | now[service]

        def ended(s: Service = service, e: set[int] = everyone) -> bool:
            """Every process of the trace ended in it (helpers too: their spans are in the UI's count)."""
            spans = process_trace(url, traces[s])
            return e | set(by_pid(spans, "started")) <= set(by_pid(spans, "lifetime"))

        wait_for(ended, f"every {service.name} lifetime span", timeout=60)
        spans = process_trace(url, traces[service])
        check_whole(spans)
        started, lifetimes = by_pid(spans, "started"), by_pid(spans, "lifetime")
        for pid in everyone:
            assert parent_of(lifetimes[pid]) == started[pid]["spanID"]
        check_ui(ui, traces[service], spans, f"{service.name}-stopped")
        check_links(url, linked_requests(url, service, since, first[service] | now[service]))
