"""Secrets in command lines never leave otelproc: redacted in its spans, its log, its state file and the
lines of `otelproc events`, unless --redact false says otherwise. The rules themselves:
tests/unit/test_redact.py.

Real `otelproc run` and `otelproc events` against the real kernel and a real OTLP receiver.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from support import PYTHON, REPO
from support.cli import QUIET
from support.subjects import LONE_COMM, MATCH_TEST, spawn

SECRETS = ("hunter2", "tok3n-value", "pw1234", "k3y-value", "envsecret")


def test_secrets_never_leave(sidecar, grpc_receiver, test_python, tmp_path):
    side = sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint, env=QUIET)
    argv = ["pass", "--password=hunter2", "--token", "tok3n-value", "postgres://app:pw1234@db/x", "API_KEY=k3y-value"]
    child = spawn(
        test_python, *argv, env={"PATH": "/usr/bin", "DB_PASSWORD": "envsecret", "OTEL_SERVICE_NAME": "vault"}
    )
    assert child.wait(30) == 0
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.attributes["process.command_args"][2:] == [
        "pass",
        "--password=***",
        "--token",
        "***",
        "postgres://app:***@db/x",
        "API_KEY=***",
    ]
    assert span.service == "vault"
    assert side.stop() == 0
    wire = b"".join(r.SerializeToString() for r in grpc_receiver.requests)
    logs = "\n".join(side.lines + side.stdout_lines)
    state = Path(side.env["OTELPROC_STATE_FILE"]).read_text()
    for secret in SECRETS:
        assert secret.encode() not in wire and secret not in logs and secret not in state


def test_redaction_can_be_switched_off(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, "--redact", "false", endpoint=grpc_receiver.endpoint, env=QUIET)
    child = spawn(test_python, "pass", "--password=hunter2")
    assert child.wait(30) == 0
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.attributes["process.command_args"][-1] == "--password=hunter2"


def test_events_redacts_argv(lone_python):
    """`otelproc events` honours --redact as `run` does."""
    events = subprocess.Popen(
        [PYTHON, "-m", "otelproc", "events", "--match", LONE_COMM],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "attached" in events.stderr.readline()
        child = subprocess.run(
            [lone_python, "-c", "pass", "--password=hunter2", "-H", "Authorization: Bearer t0k3n"],
            timeout=30,
            env={"PATH": "/usr/bin"},
        )
        assert child.returncode == 0
        time.sleep(0.5)
    finally:
        events.terminate()
        out, _ = events.communicate(timeout=30)
    assert "hunter2" not in out and "t0k3n" not in out
    assert '"--password=***"' in out and '"Authorization: Bearer ***"' in out
