"""Pre-fork servers and fork pools: each worker's spans link to, and its resource names, that worker.

Real gunicorn (UvicornWorker and sync workers, with and without --preload) and a
real multiprocessing fork pool, set up with zero code (`opentelemetry-instrument`) or with the one line
`otelproc.app.enable()`, as the docs say; the sidecar and the app export
to the same real OTLP receiver.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from support.ports import free_port
from support.servers import (
    APPS,
    SERVER,
    SETUPS,
    ask,
    assert_children_of,
    assert_each_names_its_worker,
    command,
    request_number,
    setup_env,
    stop,
)
from support.subjects import MATCH_TEST

WORKER_CLASSES = ("uvicorn.workers.UvicornWorker", "sync")


@pytest.mark.parametrize("preload", (False, True), ids=("", "preload"))
@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
@pytest.mark.parametrize("setup", SETUPS)
def test_gunicorn_workers_each_link_their_own_process_span(
    sidecar, grpc_receiver, test_python, setup, worker_class, preload
):
    """With --preload the master imports the app (and, set up in code, builds the TracerProvider)
    before it forks: each worker must still link to and name itself."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    app = "shop:app" if worker_class != "sync" else "sync_shop:app"
    argv = [
        test_python,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-k",
        worker_class,
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(APPS),
        *(["--preload"] if preload else []),
        app,
    ]
    master = subprocess.Popen(
        command(setup, argv),
        env=setup_env(grpc_receiver.endpoint, setup),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        answered = ask(port, requests=20, workers=2)
        spans = grpc_receiver.wait_for(
            lambda _: (
                (
                    found := {
                        request_number(s): s for s in grpc_receiver.spans if s.service == "shop" and s.kind == SERVER
                    }
                ).keys()
                >= answered.keys()
                and found
            )
        )
    finally:
        stop(master)
    workers = set(answered.values())
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in workers | {master.pid}))
    assert master.pid not in workers
    assert_each_names_its_worker(grpc_receiver, {n: spans[n] for n in answered}, answered, master.pid)
    assert_children_of(grpc_receiver, workers, master.pid)


@pytest.mark.parametrize("setup,flush", [(setup, "flushed") for setup in SETUPS] + [("zero-code", "unflushed")])
def test_fork_pool_tasks_link_the_worker_that_ran_them(sidecar, grpc_receiver, test_python, setup, flush):
    """unflushed: the pool workers end with os._exit and the SDK's batch processor never sends their tasks
    (its schedule is longer than the run); otelproc does, from their span regions, each task once. (With a
    short schedule, a worker can os._exit while its batch processor sends a batch: docs/correlation.md
    says otelproc then sends that batch again, a copy rather than a loss, so "once" would not hold.)"""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    argv = [test_python, str(APPS / "fork_pool.py"), "8", flush]
    env = setup_env(grpc_receiver.endpoint, setup)
    if flush == "unflushed":
        env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
    run = subprocess.run(command(setup, argv), env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    master = answer["master"]
    answered = {int(n): pid for n, pid in answer["tasks"].items()}
    workers = set(answered.values())
    assert len(workers) == 2 and master not in workers
    spans = grpc_receiver.wait_for(
        lambda _: (
            (found := {s.attributes["task.n"]: s for s in grpc_receiver.spans if s.name == "task"}).keys()
            >= answered.keys()
            and found
        )
    )
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in workers | {master}))
    tasks = [s.span_id for s in grpc_receiver.spans if s.name == "task"]
    assert len(tasks) == len(set(tasks)) == len(answered), "each task once"
    assert_each_names_its_worker(grpc_receiver, spans, answered, master)
    assert_children_of(grpc_receiver, workers, master)
