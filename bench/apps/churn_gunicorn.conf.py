"""gunicorn settings for the churn benchmark: each worker writes its pid to CHURN_PIDS as it starts, the record
the benchmark checks Jaeger against (written by the service itself, not by otelproc)."""

import os


def post_fork(server, worker):
    with open(os.environ["CHURN_PIDS"], "a") as out:
        out.write(f"{os.getpid()}\n")
