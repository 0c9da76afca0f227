"""Python services the tests run under otelproc: the apps of tests/apps, started from an untracked parent
(pytest), set up with zero code (`opentelemetry-instrument`) or in code; asking them, stopping them, and
checking that each request or task links to the worker that served it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import httpx

from support import REPO
from support.subjects import MATCH_TEST

APPS = REPO / "tests" / "apps"
SERVER = 2  # SPAN_KIND_SERVER
SETUPS = ("zero-code", "code")
BATCH_DELAY_MS = "60000"  # no batch leaves on its own while a test runs


def app_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_", "TRACE"))}
    env.update(
        OTEL_SERVICE_NAME="shop",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTELPROC_MATCH=MATCH_TEST[1],
        **extra,
    )
    return env


def zero_code(command: list[str]) -> list[str]:
    return [shutil.which("opentelemetry-instrument"), *command]


def spread_requests(answer: Callable[[], int | None], want: int, timeout: float = 60) -> dict[int, int]:
    """Calls answer() until `want` distinct answers (worker pids) came back; answer -> how many times.
    None: nobody answered (the server not listening yet). For two workers or more, four calls at a
    time: both workers wait on the listening socket and the one the kernel runs first accepts, so under
    load the same one can take every request sent one after another; one busy with a request leaves
    the next to another."""
    at_once = 1 if want == 1 else 4
    seen: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(at_once) as pool:
        while len(seen) < want and time.monotonic() < deadline:
            answers = list(pool.map(lambda _: answer(), range(at_once)))
            for got in answers:
                if got is not None:
                    seen[got] = seen.get(got, 0) + 1
            if None in answers:
                time.sleep(0.2)
    assert len(seen) >= want, f"only {seen} answered"
    return seen


def get_pids(port: int, path: str, want: int, timeout: float = 60) -> dict[int, int]:
    """GETs until `want` distinct answers came back; answer -> number of requests."""

    def answer() -> int | None:
        try:
            return int(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=30).text)
        except httpx.ConnectError:
            return None

    return spread_requests(answer, want, timeout)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
            worker_span.trace_id,
            worker_span.span_id,
        ), worker
