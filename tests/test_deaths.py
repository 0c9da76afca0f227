"""Why a Python process died, in Python's words, on its process trace in Jaeger.

Real uvicorn workers (`uvicorn --workers 2`) run the app of tests/apps/dying.py under the
zero-code helper (`opentelemetry-instrument`, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc),
started by this test (a parent otelproc does not track); the real `otelproc run` exports the
lifetime spans; both go through the Collector to Jaeger, and Jaeger's query API is the check:
the worker's lifetime span says how it ended (`exit status 1`), and the span the app side
exported under the worker's process span (docs/spans.md: its 'started' span, or its lifetime span
when it had none) names the exception with the OpenTelemetry exception conventions, its text
redacted and bounded.
"""

from __future__ import annotations

import datetime
import re
import subprocess

import httpx
import psutil

from otelproc.app.deaths import MESSAGE_LIMIT, STACKTRACE_LIMIT
from support import REPO
from support.jaeger import (
    STATUS_ERROR,
    STATUS_OK,
    JaegerSpan,
    find_spans,
    instrument_command,
    stop_server,
    wait_for,
    zero_code_env,
)
from support.ports import free_ports
from support.subjects import MATCH_TEST

APPS = REPO / "tests" / "apps"
SECRET = "hunter2"


def run_uvicorn(backend, test_python: str, dying: str, *extra: str) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    env = zero_code_env(backend.collector_endpoint, "dying", DYING=dying)
    master = subprocess.Popen(
        [
            instrument_command(),
            test_python,
            "-m",
            "uvicorn",
            "dying:app",
            "--app-dir",
            str(APPS),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return master, port


def exception_spans(spans: list[JaegerSpan]) -> list[JaegerSpan]:
    return [s for s in spans if s.attributes.get("otelproc.span") == "exception"]


def deaths_with_lifetimes(backend, since, want: int, status: str | None) -> list[tuple[JaegerSpan, JaegerSpan]]:
    """(lifetime span, exception span) pairs of one process, once `want` of them are in Jaeger: the
    exception span a child of the process's process span (docs/spans.md), the lifetime span that
    span itself (a process that ended within --start-span-delay) or, under it, its sibling."""

    def pairs() -> list[tuple[JaegerSpan, JaegerSpan]]:
        spans = find_spans(backend.query_url, "dying", since)

        def role(span: JaegerSpan) -> str | None:
            return span.attributes.get("otelproc.span")

        by_id = {(s.trace_id, s.span_id): s for s in spans if role(s) in ("started", "lifetime")}
        lifetimes = {(s.trace_id, s.attributes["otelproc.process.key"]): s for s in spans if role(s) == "lifetime"}
        found = []
        for death in exception_spans(spans):
            parent = by_id.get((death.trace_id, death.parent_span_id))
            key = death.attributes["otelproc.process.key"]
            life = lifetimes.get((death.trace_id, key))
            if parent is None or life is None or parent.attributes["otelproc.process.key"] != key:
                continue
            assert life is parent or (role(parent), life.parent_span_id) == ("started", parent.span_id), life
            if status is None or life.status_message == status:
                found.append((life, death))
        return found if len(found) >= want else []

    return wait_for(pairs, f"{want} exception spans under their process spans in Jaeger", timeout=90)


def worker_deaths(
    backend, sidecar, test_python: str, dying: str, want: int, status: str
) -> list[tuple[JaegerSpan, JaegerSpan]]:
    """otelproc running and uvicorn workers dying the `dying` way: deaths_with_lifetimes, the server stopped."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, _port = run_uvicorn(backend, test_python, dying)
    try:
        return deaths_with_lifetimes(backend, since, want, status)
    finally:
        stop_server(master)


def assert_names_the_exception(life: JaegerSpan, death: JaegerSpan, pattern: str, source: str) -> None:
    assert re.fullmatch(pattern, death.name), death.name
    assert death.status_code == STATUS_ERROR and death.status_message == death.name
    assert death.attributes["otelproc.exception.source"] == source
    assert death.attributes["otelproc.process.key"] == life.attributes["otelproc.process.key"]
    event = death.events["exception"]
    assert {"exception.type", "exception.message", "exception.stacktrace"} <= event.keys()
    assert death.attributes["error.type"] == event["exception.type"]
    assert SECRET not in death.text, "the secret reached Jaeger"


def test_a_worker_that_raises_at_import_names_the_exception(backend, sidecar, test_python):
    """uvicorn imports the app in each worker; multiprocessing's bootstrap catches the ValueError,
    prints it and exits 1 (uvicorn starts another worker, which dies the same way)."""
    pairs = worker_deaths(backend, sidecar, test_python, "import", want=2, status="exit status 1")
    for life, death in pairs:
        assert life.name == "uvicorn worker" and life.status_code == STATUS_ERROR
        assert life.attributes["process.exit.code"] == 1
        assert_names_the_exception(
            life, death, r"ValueError: bad config: password=\*\*\* \(dying\.py:\d+\)", "multiprocessing"
        )
        event = death.events["exception"]
        assert event["exception.type"] == "ValueError"
        assert event["exception.message"].startswith("bad config: password=***\nsetting_0: not valid")
        assert len(event["exception.message"]) == MESSAGE_LIMIT and event["exception.message"].endswith("…")
        trace = event["exception.stacktrace"]
        # The frames (uvicorn's, then the app's), then the exception's own words, cut where they get long.
        assert trace.startswith("Traceback (most recent call last):\n") and "deaths.py" not in trace
        assert 'dying.py", line' in trace and "in check_config" in trace
        assert "\nValueError: bad config: password=***\nsetting_0: not valid" in trace
        assert "setting_999" not in trace and trace.endswith("…") and len(trace) <= STACKTRACE_LIMIT


def test_a_worker_whose_start_up_fails_names_the_logged_exception(backend, sidecar, test_python):
    """Starlette's way: the lifespan start-up fails, uvicorn logs the traceback the app sent and the
    worker exits 3 (uvicorn's start-up failure); the master then stops."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, _port = run_uvicorn(backend, test_python, "lifespan")
    try:
        master.wait(60)
        pairs = deaths_with_lifetimes(backend, since, want=1, status="exit status 3")
    finally:
        stop_server(master)
    for life, death in pairs:
        assert life.name == "uvicorn worker" and life.attributes["process.exit.code"] == 3
        assert_names_the_exception(life, death, r"ValueError: bad config: password=\*\*\* \(dying\.py:\d+\)", "logging")
        assert death.attributes["otelproc.exception.logger"] == "uvicorn.error"
        assert "in failing_lifespan" in death.events["exception"]["exception.stacktrace"]


def test_a_thread_that_dies_is_on_its_process_trace(backend, sidecar, test_python):
    """The thread dies, the worker lives on: the span is exported at once, a child of the worker's
    process span (its 'started' span); the worker's lifetime span joins it there when the worker ends."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = run_uvicorn(backend, test_python, "thread")
    try:

        def two_thread_deaths() -> list[JaegerSpan]:
            found = exception_spans(find_spans(backend.query_url, "dying", since))
            return found if len(found) >= 2 else []

        deaths = wait_for(two_thread_deaths, "the two workers' thread deaths in Jaeger", timeout=90)
        answer = wait_for(lambda: _get(port), "a worker to answer after its thread died", timeout=30)
        assert int(answer) in {c.pid for c in psutil.Process(master.pid).children()}
    finally:
        stop_server(master)
    pairs = deaths_with_lifetimes(backend, since, want=2, status=None)
    for life, death in pairs:
        assert life.name == "uvicorn worker" and life.status_code == STATUS_OK  # stopped by SIGTERM, as asked
        assert_names_the_exception(
            life,
            death,
            r"ConnectionError: poller lost redis://app:\*\*\*@127\.0\.0\.1:6379/0 \(dying\.py:\d+\) "
            r"in thread poller",
            "threading.excepthook",
        )
        assert death.attributes["thread.name"] == "poller"
        assert life.parent_span_id == death.parent_span_id, "both under the worker's 'started' span"
    assert {d.span_id for d in deaths} <= {d.span_id for _, d in pairs}


def _get(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    except httpx.HTTPError:
        return None


def test_sys_exit_with_a_message_names_it(backend, sidecar, test_python):
    pairs = worker_deaths(backend, sidecar, test_python, "exit", want=1, status="exit status 1")
    for life, death in pairs:
        assert_names_the_exception(life, death, r"SystemExit: bad config: token=\*\*\* \(dying\.py:\d+\)", "sys.exit")
        assert death.events["exception"]["exception.message"] == "bad config: token=***"
        assert 'dying.py", line' in death.events["exception"]["exception.stacktrace"]
