"""The request that died with its worker: in its caller's trace in Jaeger, ended at the death, saying
what killed it, linked to the worker's process span, and that span linked back to it.

Real servers (uvicorn --workers 2, gunicorn's sync workers) run the apps of tests/apps/victim.py and
sync_victim.py under the zero-code helper (opentelemetry-instrument with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc), started by this test (a parent otelproc does not
track); the real `otelproc run` exports through the Collector to Jaeger, and Jaeger's query API is
the check. Each request carries a traceparent of the test's own, as a caller's would.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from support import REPO
from support.jaeger import (
    SERVER,
    STATUS_ERROR,
    JaegerSpan,
    find_spans,
    instrument_command,
    stop_server,
    wait_for,
    zero_code_env,
)
from support.callers import Caller
from support.ports import free_ports
from support.regions import in_flight, unexported
from support.subjects import MATCH_TEST, MEMORY_V1, remove_cgroup

APPS = REPO / "tests" / "apps"
SERVICE = "victim"


def app_env(endpoint: str, notes: Path, **extra: str) -> dict[str, str]:
    # OTEL_BSP_SCHEDULE_DELAY: the SDK's default, said outright: a finished request waits up to 5 s for export.
    settings = {"OTEL_BSP_SCHEDULE_DELAY": "5000", "VICTIM_DIR": str(notes), **extra}
    return zero_code_env(endpoint, SERVICE, **settings)


def start_uvicorn(
    endpoint: str, test_python: str, notes: Path, healthcheck_s: int = 60, **extra: str
) -> tuple[subprocess.Popen, int]:
    """healthcheck_s: how long uvicorn waits for a worker's answer before it kills it. Long, but where
    that kill is the test: under load a short one kills workers the test means to kill itself."""
    (port,) = free_ports(1)
    command = [
        instrument_command(),
        test_python,
        "-m",
        "uvicorn",
        "victim:app",
        "--app-dir",
        str(APPS),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--timeout-worker-healthcheck",
        str(healthcheck_s),
    ]
    master = subprocess.Popen(
        command, env=app_env(endpoint, notes, **extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: answers(port), "uvicorn to answer", timeout=60)
    return master, port


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def worker_in(notes: Path, path: str) -> int:
    """The pid of the first worker that took path, as the app noted it at the request's start (one line
    per worker that took it)."""
    note = notes / path
    return int(wait_for(lambda: note.exists() and note.read_text(), f"a worker to take /{path}", timeout=30).split()[0])


def trace_spans(backend, since, trace_id: str) -> list[JaegerSpan]:
    return [s for s in find_spans(backend.query_url, SERVICE, since) if s.trace_id == trace_id]


def server_spans(backend, since, trace_id: str) -> list[JaegerSpan]:
    """The request's server span (the ASGI middleware's 'http send' spans are its children)."""
    return [s for s in trace_spans(backend, since, trace_id) if s.kind == SERVER]


def lifetime_of(backend, since, pid: int) -> JaegerSpan:
    def find() -> JaegerSpan | None:
        for span in find_spans(backend.query_url, SERVICE, since):
            if span.attributes.get("otelproc.span") == "lifetime" and span.attributes.get("process.pid") == pid:
                return span
        return None

    return wait_for(find, f"the lifetime span of worker {pid}", timeout=60)


def process_span_ids(backend, since, life: JaegerSpan) -> tuple[str, str]:
    """The worker's process span (docs/spans.md): its 'started' span, or its lifetime span when it had none."""
    key = life.attributes["otelproc.process.key"]
    for span in find_spans(backend.query_url, SERVICE, since):
        if span.attributes.get("otelproc.span") == "started" and span.attributes["otelproc.process.key"] == key:
            return span.trace_id, span.span_id
    return life.trace_id, life.span_id


def assert_linked_both_ways(backend, since, request: JaegerSpan, life: JaegerSpan) -> None:
    """The request links to its worker's process span, and the worker's lifetime span links to the request."""
    assert process_span_ids(backend, since, life) in [(t, s) for t, s, _ in request.links], (
        "the request links to its worker"
    )
    assert (request.trace_id, request.span_id) in [(t, s) for t, s, _ in life.links], "the worker links to it"


def assert_died_with_its_worker(backend, since, caller: Caller, worker: int, status: str, error_type: str) -> None:
    """The caller's trace has the request's server span, ended by otelproc at the death: status ERROR with
    the worker's own sentence, error.type as there, a link to the worker's process span, and the
    worker's lifetime span links back to it."""
    life = lifetime_of(backend, since, worker)
    assert life.status_code == STATUS_ERROR and life.status_message.startswith(status), (life.status_message, status)
    (request,) = wait_for(
        lambda: server_spans(backend, since, caller.trace_id), "the request in its caller's trace", 60
    )
    assert request.parent_span_id == caller.parent_id, request  # under the caller
    assert request.status_code == STATUS_ERROR and request.status_message == life.status_message, request
    assert request.attributes["error.type"] == error_type
    assert request.attributes["otelproc.span.ended_by"] == "process death"
    assert request.resource["service.name"] == SERVICE
    assert request.attributes.get("http.target", request.attributes.get("url.path", "")).endswith("/" + caller.path)
    assert_linked_both_ways(backend, since, request, life)


def test_a_request_in_flight_when_its_worker_is_sigkilled_is_in_its_callers_trace(
    backend, sidecar, test_python, tmp_path
):
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "slow")
        worker = worker_in(tmp_path, "slow")
        time.sleep(0.5)  # well inside the request
        os.kill(worker, signal.SIGKILL)
        assert_died_with_its_worker(
            backend, since, caller, worker, f"killed by SIGKILL {sender(os.getpid())}", "SIGKILL"
        )
    finally:
        stop_server(master)


def sender(pid: int) -> str:
    """How the process span names a sender: its pid and its comm."""
    return f"from pid {pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})"


def test_a_request_that_segfaults_its_worker_is_in_its_callers_trace(backend, sidecar, test_python, tmp_path):
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "segfault")
        worker = worker_in(tmp_path, "segfault")
        assert_died_with_its_worker(
            backend, since, caller, worker, "killed by SIGSEGV from the kernel (SEGV_MAPERR", "SIGSEGV"
        )
    finally:
        stop_server(master)


def test_a_request_whose_worker_exits_with_an_error_is_in_its_callers_trace(backend, sidecar, test_python, tmp_path):
    """os._exit(3) in the middle of a request (a library giving up on a fatal error): no signal, but the
    request never finished, and its worker's exit status says why."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "exit")
        worker = worker_in(tmp_path, "exit")
        assert_died_with_its_worker(backend, since, caller, worker, "exit status 3", "3")
    finally:
        stop_server(master)


def test_a_request_that_exhausts_a_memory_cgroup_is_in_its_callers_trace(backend, sidecar, test_python, tmp_path):
    cgroup = MEMORY_V1 / f"otelproc-victim-{os.getpid()}"
    cgroup.mkdir()
    since = datetime.datetime.now(datetime.timezone.utc)
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(96 << 20))
        sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
        master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path, VICTIM_CGROUP=str(cgroup))
        try:
            caller = Caller(f"http://127.0.0.1:{port}", "eat")
            worker = worker_in(tmp_path, "eat")
            assert_died_with_its_worker(
                backend,
                since,
                caller,
                worker,
                f"killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup {cgroup.name})",
                "OOMKilled",
            )
        finally:
            stop_server(master)
    finally:
        remove_cgroup(cgroup)


def test_a_request_that_hangs_its_worker_dies_with_it_when_uvicorn_kills_it(backend, sidecar, test_python, tmp_path):
    """uvicorn's supervisor pings each worker; one that does not answer (its event loop blocked) it kills."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path, healthcheck_s=2)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "block")
        worker = worker_in(tmp_path, "block")
        assert_died_with_its_worker(
            backend, since, caller, worker, f"killed by SIGKILL {sender(master.pid)}: unresponsive worker", "SIGKILL"
        )
    finally:
        stop_server(master)


def start_gunicorn(endpoint: str, test_python: str, notes: Path) -> tuple[subprocess.Popen, int]:
    """gunicorn, two sync workers of tests/apps/sync_victim.py, --timeout 2."""
    (port,) = free_ports(1)
    command = [
        instrument_command(),
        test_python,
        "-m",
        "gunicorn",
        "sync_victim:app",
        "--chdir",
        str(APPS),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--timeout",
        "2",
    ]
    master = subprocess.Popen(
        command, env=app_env(endpoint, notes), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: answers(port), "gunicorn to answer", timeout=60)
    return master, port


def test_a_gunicorn_worker_stuck_past_its_abort_is_killed_and_the_request_is_in_its_callers_trace(
    backend, sidecar, test_python, tmp_path
):
    """A worker stuck in a C call never runs its SIGABRT handler (Python runs handlers between bytecodes):
    gunicorn's master kills it at its next check, and both spans say it was the worker timeout."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_gunicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "block")
        worker = worker_in(tmp_path, "block")
        status = f"killed by SIGKILL {sender(master.pid)}: worker timeout, still running after SIGABRT"
        assert_died_with_its_worker(backend, since, caller, worker, status, "SIGKILL")
    finally:
        stop_server(master)


def test_gunicorns_worker_timeout_is_an_abort_and_the_request_is_in_its_callers_trace(
    backend, sidecar, test_python, tmp_path
):
    """gunicorn's master sends SIGABRT to a worker past --timeout; the worker handles it and exits."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_gunicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "sleep")
        worker = worker_in(tmp_path, "sleep")
        life = lifetime_of(backend, since, worker)
        sentence = f"aborted by SIGABRT {sender(master.pid)}: worker timeout"
        assert (life.status_code, life.status_message, life.attributes["error.type"]) == (
            STATUS_ERROR,
            sentence,
            "SIGABRT",
        )
        (request,) = wait_for(lambda: server_spans(backend, since, caller.trace_id), "the request in its trace", 60)
        assert request.parent_span_id == caller.parent_id, request
        assert (request.status_code, request.status_message, request.attributes["error.type"]) == (
            STATUS_ERROR,
            sentence,
            "SIGABRT",
        )
        assert_linked_both_ways(backend, since, request, life)
    finally:
        stop_server(master)


def test_a_request_finished_just_before_its_worker_is_sigkilled_reaches_its_trace_once(
    backend, sidecar, test_python, tmp_path
):
    """Its span had ended and waited in the batch processor's queue (5 s) when the worker died with it."""
    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    master, port = start_uvicorn(backend.collector_endpoint, test_python, tmp_path)
    try:
        caller = Caller(f"http://127.0.0.1:{port}", "quick")
        caller.thread.join(30)
        assert caller.status == 200
        worker = worker_in(tmp_path, "quick")
        # The caller has its answer before the server span ends: under load the worker can be killed in between.
        wait_for(lambda: in_flight(worker) == 0, "the worker to end the request's spans", timeout=10)
        os.kill(worker, signal.SIGKILL)
        life = lifetime_of(backend, since, worker)
        (request,) = wait_for(lambda: server_spans(backend, since, caller.trace_id), "the request in its trace", 60)
        time.sleep(3)  # a second copy would arrive within the Collector's batch
        spans = trace_spans(backend, since, caller.trace_id)
        assert (
            len(spans) == len({s.span_id for s in spans}) and len(server_spans(backend, since, caller.trace_id)) == 1
        ), [(s.name, s.span_id) for s in spans]
        assert request.parent_span_id == caller.parent_id and request.status_code != STATUS_ERROR, request
        assert "otelproc.span.ended_by" not in request.attributes
        assert process_span_ids(backend, since, life) in [(t, s) for t, s, _ in request.links], (
            "the request links to its worker"
        )
    finally:
        stop_server(master)


def test_a_worker_killed_while_its_batch_waits_for_the_collectors_answer_loses_none_of_it(
    grpc_receiver, sidecar, test_python, tmp_path
):
    """The Collector has taken the batch but not answered when the worker dies: the worker still holds
    the batch's spans, and otelproc sends them again. Every request is there, each a second time with
    the same ids (docs/correlation.md: at least once, the copy at most the batch in flight)."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    # The batch processor's 5 s: every span of the three requests is in one batch per worker (a span that
    # ended after its worker's export began would queue behind the held answer). The exporter waits for
    # the answer as long as the receiver holds it, not its default 10 s.
    master, port = start_uvicorn(grpc_receiver.endpoint, test_python, tmp_path, OTEL_EXPORTER_OTLP_TIMEOUT="120")
    try:
        grpc_receiver.answering.clear()
        callers = [Caller(f"http://127.0.0.1:{port}", "quick") for _ in range(3)]
        for caller in callers:
            caller.thread.join(30)
            assert caller.status == 200
        traces = {caller.trace_id for caller in callers}

        def requests() -> list:
            return [s for s in grpc_receiver.spans if s.trace_id in traces and s.kind == SERVER]

        taken = grpc_receiver.wait_for(lambda _: len(requests()) >= 3 and requests(), timeout=30)
        workers = {span.resource["process.pid"] for span in taken}
        assert all(unexported(worker) for worker in workers), "each worker still waits for the answer"
        for worker in workers:
            os.kill(worker, signal.SIGKILL)
        grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(w) for w in workers), timeout=30)
    finally:
        grpc_receiver.answering.set()
        stop_server(master)
    copies = grpc_receiver.wait_for(lambda _: len(requests()) >= 6 and requests(), timeout=30)
    by_id: dict[str, list] = {}
    for span in copies:
        by_id.setdefault(span.span_id, []).append(span)
    assert sorted(len(same) for same in by_id.values()) == [2, 2, 2], [(s.span_id, s.trace_id) for s in copies]
    for first, again in by_id.values():
        assert (again.trace_id, again.parent_span_id, again.name) == (first.trace_id, first.parent_span_id, first.name)
        assert "otelproc.span.ended_by" not in again.attributes, "it had ended: it goes out as it ended"
