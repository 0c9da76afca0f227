"""What otelproc knows about Python servers and worker pools, in one place.

A server model is a way a Python service starts its workers. Three facts about
each one decide how it reads in a trace:

- how a worker starts, which decides its span's name: a forked worker keeps its
  parent's program name (gunicorn, a multiprocessing fork pool, Celery's prefork
  pool); a worker started by multiprocessing's spawn (uvicorn --workers) runs
  `python -c 'from multiprocessing.spawn import spawn_main; ...' --multiprocessing-fork`
  and is named "<its parent's program> worker";
- which span of a worker is the first of its trace in that process, which gets
  the link to the worker's own process span: a forked worker inherits its
  parent's current span, so its first span may have a local parent that was
  started in another process;
- how a worker ends, which decides whether what it recorded last leaves it: the
  SDK flushes at exit from an atexit handler, which os._exit skips (Celery's
  prefork pool processes end with it; see flush_before_pool_exit), and so does a
  death by a signal: uvicorn (alone, --workers, --reload, gunicorn's UvicornWorker)
  stops gracefully on SIGTERM and raises it again with the default action. That is
  not uvicorn's alone, so the flush for it is the app side's (otelproc/app/sigterm.py).

To support a new server model: add its worker's marker to SPAWNED_WORKER_MARKERS
when it spawns workers with a command line of their own, add its row to the table
in docs/correlation.md, and a test with the real server that starts it from an
untracked parent (tests/test_prefork.py shows how).
"""

from __future__ import annotations

import os
import signal
import sys
from functools import lru_cache
from typing import Callable

from otelproc.matching import is_python

# Arguments that mark a python started by its parent to be one of its workers.
SPAWNED_WORKER_MARKERS = ("--multiprocessing-fork",)  # multiprocessing's spawn (uvicorn --workers, spawn pools)
_PYTHON_OPTIONS_WITH_VALUE = {"-W", "-X", "--check-hash-based-pycs"}
# What a server's master means by a signal it sends one of its workers, for the sentence of how the
# worker ended: gunicorn aborts a worker past --timeout (SIGABRT, which the worker handles, then
# exits; SIGKILL if it lingers), uvicorn kills one its health check finds unresponsive. Celery's
# prefork pool ends a process past a task's hard time limit with SIGTERM, then SIGKILL, as it
# also ends them at a shutdown: the signal alone does not tell the two apart, so it has no row.
MASTER_SIGNALS: dict[tuple[str, int], str] = {
    ("gunicorn", signal.SIGABRT): "worker timeout",
    ("uvicorn", signal.SIGKILL): "unresponsive worker",
}
# What a master's signal means after an earlier one of its to the same worker went unanswered: gunicorn
# kills a worker that outlives its abort (one stuck in C code, where Python's handler never runs) or its
# stop past --graceful-timeout. (master, earlier signal, signal): reason.
MASTER_FOLLOW_UPS: dict[tuple[str, int, int], str] = {
    ("gunicorn", signal.SIGABRT, signal.SIGKILL): "worker timeout, still running after SIGABRT",
    ("gunicorn", signal.SIGTERM, signal.SIGKILL): "still running after --graceful-timeout",
    ("gunicorn", signal.SIGQUIT, signal.SIGKILL): "still running after --graceful-timeout",
}


@lru_cache(maxsize=256)  # asked for each span and each child; a pool of workers shares one answer (argv: 8 KiB at most)
def program_name(exe: str | None, argv: tuple[str, ...] | None, comm: str, parent_program: str | None) -> str:
    """What a person calls the program: the script or module a python runs, else the executable's name."""
    base = os.path.basename(exe or "") or comm
    if not argv or not is_python(base):
        return base
    args = iter(argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, base)
        if arg == "-c":
            if any(marker in argv for marker in SPAWNED_WORKER_MARKERS):
                return f"{parent_program} worker" if parent_program else f"{base} worker"
            return f"{base} -c"
        if arg in _PYTHON_OPTIONS_WITH_VALUE:
            next(args, None)
        elif not arg.startswith("-"):
            return os.path.basename(arg)
    return base


def master_reason(parent_program: str | None, signo: int, earlier: int | None = None) -> str | None:
    """Why a worker's master sent it signo (after its signal earlier, if any), where the server model says
    (see MASTER_SIGNALS, MASTER_FOLLOW_UPS)."""
    if earlier is not None:
        follow_up = MASTER_FOLLOW_UPS.get((parent_program or "", earlier, signo))
        if follow_up is not None:
            return follow_up
    return MASTER_SIGNALS.get((parent_program or "", signo))


def first_in_process(parent_span_id: int | None, parent_is_remote: bool, open_here: set[int]) -> bool:
    """Whether a span is the first of its trace in this process: it has no parent, a remote one, or a
    local one this process did not start (a forked worker inherits its parent's current span)."""
    return parent_span_id is None or parent_is_remote or parent_span_id not in open_here


def flush_before_pool_exit(flush: Callable[[], object]) -> None:
    """Flushes the process's spans when it ends as a Celery prefork pool process.

    A pool process ends with os._exit, which runs no atexit handler, so the SDK's batch
    processor would drop the spans of its last tasks; Celery sends worker_process_shutdown in
    the pool process just before. Called in each process once it records spans: a pool
    process has imported Celery by its first task, and importing it here would burden
    every other service.
    """
    signals = sys.modules.get("celery.signals")
    if signals is not None:
        signals.worker_process_shutdown.connect(lambda **_: flush(), weak=False, dispatch_uid="otelproc.flush")
