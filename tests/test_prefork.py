"""Pre-fork servers and fork pools: each worker's spans link to, and its resource names, that worker.

Real gunicorn (UvicornWorker and sync workers, with and without --preload) and a
real multiprocessing fork pool, set up with zero code (`opentelemetry-instrument`) or with the one line
`otelproc.app.enable()`, as the docs say; the sidecar and the app export
to the same real OTLP receiver.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from support import REPO
from support.subjects import MATCH_TEST
from test_correlation import APPS, SERVER, app_env, free_port, stop, zero_code

SETUPS = ("zero-code", "code")
WORKER_CLASSES = ("uvicorn.workers.UvicornWorker", "sync")


def setup_env(endpoint: str, setup: str) -> dict[str, str]:
    # PYTHONPATH: the app imports this worktree's otelproc, not an installed copy.
    env = app_env(endpoint, OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="otelproc", PYTHONPATH=f"{REPO}:{APPS}")
    if setup == "code":
        env["SHOP_SETUP"] = "code"
    return env


def command(setup: str, argv: list[str]) -> list[str]:
    return zero_code(argv) if setup == "zero-code" else argv


def ask(port: int, requests: int, workers: int, timeout: float = 40) -> dict[int, int]:
    """GET /?n=<n> until `requests` answered and `workers` pids answered; n -> pid that answered."""
    import time

    answers: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    n = 0
    while (len(answers) < requests or len(set(answers.values())) < workers) and time.monotonic() < deadline:
        try:
            answers[n] = int(httpx.get(f"http://127.0.0.1:{port}/?n={n}", timeout=5).text)
            n += 1
        except httpx.HTTPError:
            time.sleep(0.2)
    assert len(set(answers.values())) >= workers, f"answers: {answers}"
    return answers


def request_number(span) -> int:
    """The n of GET /?n=<n>, from whichever URL attribute the instrumentation's semconv version sets."""
    for name in ("url.query", "http.target", "http.url", "url.full"):
        _, found, n = str(span.attributes.get(name, "")).partition("n=")
        if found:
            return int(n)
    raise AssertionError(f"no request number in {span.attributes}")


def assert_each_names_its_worker(receiver, spans: dict[int, object], answered: dict[int, int], master: int) -> None:
    """Each span (by request/task number) links to, and its resource names, the pid that answered it."""
    process_spans = receiver.process_spans()
    master_keys = {s.attributes["otelproc.process.key"] for s in receiver.of_pid(master)}
    assert master_keys, "the master's own process span is in"
    for n, span in spans.items():
        worker = answered[n]
        links = [(t, s) for t, s, attrs in span.links if attrs.get("otelproc.link") == "process"]
        assert len(links) == 1, span
        process_span = process_spans.get(links[0])
        assert process_span is not None, f"request {n}: its link leads to no exported process span"
        assert process_span.attributes["process.pid"] == worker, f"request {n} linked to another process"
        key = process_span.attributes["otelproc.process.key"]
        assert span.resource["process.pid"] == worker
        assert span.resource["otelproc.process.key"] == key == span.attributes["otelproc.process.key"]
        assert key not in master_keys


def process_span_of(receiver, pid: int):
    """The one process span of pid (docs/spans.md): its 'started' span, or its lifetime span when it had none."""
    (span,) = [s for s in receiver.process_spans().values() if s.attributes["process.pid"] == pid]
    return span


def assert_children_of(receiver, workers: set[int], master: int) -> None:
    """In the process trace, each worker hangs from the master: its process span is a child of the
    master's, and its lifetime span (how it ended) is that process span or that span's child."""
    master_span = process_span_of(receiver, master)
    for worker in workers:
        worker_span = process_span_of(receiver, worker)
        assert (worker_span.trace_id, worker_span.parent_span_id) == (master_span.trace_id, master_span.span_id), worker
        (lifetime,) = receiver.of_pid(worker)
        assert lifetime is worker_span or (lifetime.trace_id, lifetime.parent_span_id) == (
            worker_span.trace_id, worker_span.span_id), worker


@pytest.mark.parametrize("preload", (False, True), ids=("", "preload"))
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize("setup", SETUPS)
def test_gunicorn_workers_each_link_their_own_process_span(sidecar, grpc_receiver, test_python, setup, worker_class,
                                                           preload):
    """With --preload the master imports the app (and, set up in code, builds the TracerProvider)
    before it forks: each worker must still link to and name itself."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    app = "shop:app" if worker_class != "sync" else "sync_shop:app"
    argv = [test_python, "-m", "gunicorn", "-w", "2", "-k", worker_class, "-b", f"127.0.0.1:{port}",
            "--chdir", str(APPS), *(["--preload"] if preload else []), app]
    master = subprocess.Popen(command(setup, argv), env=setup_env(grpc_receiver.endpoint, setup),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        answered = ask(port, requests=20, workers=2)
        spans = grpc_receiver.wait_for(
            lambda _: (found := {request_number(s): s for s in grpc_receiver.spans
                                 if s.service == "shop" and s.kind == SERVER}).keys() >= answered.keys() and found
        )
    finally:
        stop(master)
    workers = set(answered.values())
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in workers | {master.pid}))
    assert master.pid not in workers
    assert_each_names_its_worker(grpc_receiver, {n: spans[n] for n in answered}, answered, master.pid)
    assert_children_of(grpc_receiver, workers, master.pid)


@pytest.mark.parametrize("setup", SETUPS)
def test_fork_pool_tasks_link_the_worker_that_ran_them(sidecar, grpc_receiver, test_python, setup):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    argv = [test_python, str(APPS / "fork_pool.py"), "8"]
    run = subprocess.run(command(setup, argv), env=setup_env(grpc_receiver.endpoint, setup),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    master = answer["master"]
    answered = {int(n): pid for n, pid in answer["tasks"].items()}
    workers = set(answered.values())
    assert len(workers) == 2 and master not in workers
    spans = grpc_receiver.wait_for(
        lambda _: (found := {s.attributes["task.n"]: s for s in grpc_receiver.spans if s.name == "task"}).keys()
        >= answered.keys() and found
    )
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in workers | {master}))
    assert_each_names_its_worker(grpc_receiver, spans, answered, master)
    assert_children_of(grpc_receiver, workers, master)
