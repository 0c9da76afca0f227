"""The churn benchmark's Celery app: each pool process writes its pid to CHURN_PIDS as it starts (the record the
benchmark checks Jaeger against); the task only answers with its pid."""

import os

from celery import Celery
from celery.signals import worker_process_init

app = Celery("churn_tasks", broker=os.environ["CHURN_REDIS"])
app.conf.task_ignore_result = True


@worker_process_init.connect
def pool_process_started(**_: object) -> None:
    with open(os.environ["CHURN_PIDS"], "a") as out:
        out.write(f"{os.getpid()}\n")


@app.task
def work() -> int:
    return os.getpid()
