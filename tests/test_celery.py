"""Celery's prefork pool, under the zero-code helper: each task links to the pool process that ran it.

A real Celery worker (`celery -A celery_tasks worker --pool prefork -c 2`) with a
real Redis broker (redis-server on a loopback port of this module's own), traced by
opentelemetry-instrumentation-celery under `opentelemetry-instrument` with
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc, started from a parent otelproc does not
track; the sidecar and the worker export to the same real OTLP receiver.
"""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
import subprocess
import time
from typing import Iterator

import psutil
import pytest
from celery import Celery
from celery.exceptions import TimeLimitExceeded

from support.ports import free_port
from support.servers import assert_children_of, assert_each_names_its_worker, command, setup_env, stop
from support.subjects import MATCH_TEST

TASK_SPAN = "run/celery_tasks.whoami"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's redis-server on a free loopback port, no persistence; stopped by its pid at the end."""
    import redis

    port = free_port()
    server = subprocess.Popen(
        [
            shutil.which("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server)


def prefork_worker(python: str, processes: int) -> list[str]:
    """A Celery worker of tests/apps/celery_tasks.py with a prefork pool of that many processes."""
    return [
        python,
        "-m",
        "celery",
        "-A",
        "celery_tasks",
        "worker",
        "--pool",
        "prefork",
        "-c",
        str(processes),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "info",
    ]


def task_id(span) -> str:
    """The id of the task a task span ran, whichever messaging semconv version the instrumentation sets."""
    return span.attributes.get("messaging.message.id") or span.attributes["messaging.message_id"]


def test_celery_prefork_tasks_link_the_pool_process_that_ran_them(
    sidecar, grpc_receiver, test_python, redis_url, tmp_path
):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    env = setup_env(grpc_receiver.endpoint, "zero-code")
    env["CELERY_REDIS"] = redis_url
    # Spans leave the pool processes only when their batch processor flushes: a batch every
    # minute means none leaves on the schedule, so every task span that arrives was flushed
    # when its pool process ended.
    env["OTEL_BSP_SCHEDULE_DELAY"] = "60000"
    argv = prefork_worker(test_python, 2)
    worker = subprocess.Popen(
        command("zero-code", argv), env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w")
    )
    client = Celery(broker=redis_url, backend=redis_url)
    try:
        # A task over its hard time limit: the main worker process ends the pool process that runs it.
        pid_file = tmp_path / "hang.pid"
        hung = client.send_task("celery_tasks.hang", args=[str(pid_file)])
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        timed_out = int(pid_file.read_text())
        with pytest.raises(TimeLimitExceeded):
            hung.get(timeout=30)
        # Another pool process, SIGKILLed from here.
        pool = {p.pid for p in psutil.Process(worker.pid).children()}
        killed = min(pool - {timed_out})
        os.kill(killed, signal.SIGKILL)
        # Tasks, until the pool processes that replaced them both answered.
        answered: dict[str, int] = {}
        while len(set(answered.values())) < 2:
            assert len(answered) < 200, answered
            results = [client.send_task("celery_tasks.whoami", args=[n]) for n in range(10)]
            answered.update({r.id: r.get(timeout=30) for r in results})
    finally:
        stop(worker)  # a warm shutdown: the pool processes end, and with them their batch processors
        client.close()
    master = worker.pid
    assert worker.returncode == 0, (tmp_path / "worker.log").read_text()
    ran = set(answered.values())
    assert not ran & {master, killed, timed_out}
    spans = grpc_receiver.wait_for(
        lambda _: (
            (found := {task_id(s): s for s in grpc_receiver.spans if s.name == TASK_SPAN}).keys() >= answered.keys()
            and found
        )
    )
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in ran | {master, killed, timed_out}))
    assert_each_names_its_worker(grpc_receiver, {t: spans[t] for t in answered}, answered, master)
    assert_children_of(grpc_receiver, ran | {killed, timed_out}, master)
    (killed_span,), (timed_out_span,) = grpc_receiver.of_pid(killed), grpc_receiver.of_pid(timed_out)
    assert killed_span.status_message.startswith(f"killed by SIGKILL from pid {os.getpid()} (")
    # billiard's hard time limit: SIGTERM, then SIGKILL, from the main worker process.
    main_name = timed_out_span.attributes["process.executable.name"]
    assert timed_out_span.status_message == f"killed by SIGKILL from pid {master} ({main_name})"
    assert killed_span.name == timed_out_span.name == "celery"
    # What the alert OtelprocCeleryTimeLimitKill (deploy/prometheus/rules.yml) selects, as the spanmetrics
    # connector labels it: span name celery, error type SIGKILL, sent by a process.
    a = timed_out_span.attributes
    assert (a["error.type"], a["otelproc.exit.outcome"], a["otelproc.exit.sender"]) == ("SIGKILL", "signal", "process")


def test_a_task_past_its_hard_time_limit_is_in_its_callers_trace_linked_to_the_pool_process_it_took(
    backend, sidecar, test_python, redis_url, tmp_path
):
    """billiard ends the pool process running a task past its hard time limit (SIGTERM, then SIGKILL from the
    main worker process): the task's span died with it, in flight. It reaches its caller's trace in Jaeger,
    ended at the kill, saying so, linked to the pool process's span, which links back to it."""
    from support.jaeger import STATUS_ERROR, find_spans, wait_for

    since = datetime.datetime.now(datetime.timezone.utc)
    sidecar(*MATCH_TEST, endpoint=backend.collector_endpoint)
    env = setup_env(backend.collector_endpoint, "zero-code")
    env.update(CELERY_REDIS=redis_url, OTEL_SERVICE_NAME="tasks")
    argv = prefork_worker(test_python, 1)
    worker = subprocess.Popen(
        command("zero-code", argv), env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w")
    )
    client = Celery(broker=redis_url, backend=redis_url)
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    try:
        pid_file = tmp_path / "hang.pid"
        hung = client.send_task(
            "celery_tasks.hang", args=[str(pid_file)], headers={"traceparent": f"00-{trace_id}-{caller}-01"}
        )
        with pytest.raises(TimeLimitExceeded):
            hung.get(timeout=60)
        pool = int(pid_file.read_text())
        spans = wait_for(
            lambda: [
                s
                for s in find_spans(backend.query_url, "tasks", since)
                if s.trace_id == trace_id and s.name == "run/celery_tasks.hang"
            ],
            "the task's span in its caller's trace",
            timeout=60,
        )
        (lifetime,) = wait_for(
            lambda: [
                s
                for s in find_spans(backend.query_url, "tasks", since)
                if s.attributes.get("otelproc.span") == "lifetime" and s.attributes.get("process.pid") == pool
            ],
            "the pool process's lifetime span",
            timeout=60,
        )
    finally:
        stop(worker)
        client.close()
    (task,) = spans
    assert task.parent_span_id == caller, "under the caller that sent it"
    assert lifetime.status_message.startswith(f"killed by SIGKILL from pid {worker.pid} (")
    # The pool process's SIGTERM handler (billiard's) exits at once: the task ends as the process unwinds.
    assert (task.status_code, task.status_message, task.attributes["error.type"]) == (
        STATUS_ERROR,
        "stopped by SIGTERM",
        "SIGTERM",
    ), task
    assert task_id(task) == hung.id
    assert (task.trace_id, task.span_id) in [(t, s) for t, s, _ in lifetime.links], "the pool process links to it"
    assert lifetime.span_id in {s for _, s, _ in task.links} or lifetime.parent_span_id in {s for _, s, _ in task.links}
