"""A Celery app for the prefork pool test: each task answers with the pid of the pool process that ran it.

Traced with zero code (`opentelemetry-instrument`, with opentelemetry-instrumentation-celery
installed): the task spans are the instrumentation's, nothing here knows of OpenTelemetry.
The broker and the result backend are the Redis at CELERY_REDIS (redis://127.0.0.1:<port>).
"""

import os
import time

from celery import Celery

app = Celery("celery_tasks", broker=os.environ["CELERY_REDIS"], backend=os.environ["CELERY_REDIS"])


@app.task
def whoami(n: int) -> int:
    time.sleep(0.05)  # long enough for the two pool processes to share the tasks
    return os.getpid()


@app.task(time_limit=1)
def hang(pid_file: str) -> None:
    """Writes its pid, then outlives its hard time limit: the main worker process ends the pool process."""
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(60)
