"""A multiprocessing fork pool: every task is a root span in the worker that ran it.

Prints, as JSON, its own pid and task number -> pid of the worker that ran it. Pool workers end
with os._exit, which runs no atexit handler: each task flushes its spans, unless the second argument
is "unflushed" (what the last tasks of a worker recorded is then left to otelproc).
"""

import json
import multiprocessing
import os
import sys
import time

from opentelemetry import trace

import otel_setup  # noqa: F401 (sets up the SDK when SHOP_SETUP=code)


FLUSH = sys.argv[2:] != ["unflushed"]


def task(n: int) -> tuple[int, int]:
    with trace.get_tracer("fork_pool").start_as_current_span("task", attributes={"task.n": n}):
        pid = os.getpid()
        time.sleep(0.05)  # long enough that both workers take tasks
    if FLUSH:
        trace.get_tracer_provider().force_flush()
    return n, pid


if __name__ == "__main__":
    with trace.get_tracer("fork_pool").start_as_current_span("main"):
        pool = multiprocessing.get_context("fork").Pool(2)
        results = dict(pool.map(task, range(int(sys.argv[1])), chunksize=1))
        pool.close()
        pool.join()
    print(json.dumps({"master": os.getpid(), "tasks": results}), flush=True)
