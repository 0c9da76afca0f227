"""Faults, restarts, bad input, secrets, self-telemetry: `otelproc run` as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from support.cli import QUIET, assert_one_line_error, run_with
from support.identity import HOST_PIDNS, expected_ids
from support.ports import free_port
from support.subjects import MATCH_TEST, TEST_COMM, proc_start_ticks, run_all, spawn


def summary(side) -> dict[str, int]:
    """The counters of otelproc's last log line: 'stopped; ... dropped: export_failed=3, ...'."""
    line = side.wait_line("stopped;")
    dropped = line.split("dropped: ", 1)[1].split(";")[0]
    return {} if dropped == "none" else {k: int(v) for k, v in (item.split("=") for item in dropped.split(", "))}


def test_collector_down_then_back(sidecar, grpc_receiver, test_python):
    side = sidecar(*MATCH_TEST, "--start-span-delay", "3600", endpoint=grpc_receiver.endpoint,
                   env={**QUIET, "OTEL_EXPORTER_OTLP_TIMEOUT": "2", "OTEL_BSP_SCHEDULE_DELAY": "200"})
    before = run_all(test_python, 5, "before")
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in before))
    grpc_receiver.stop()
    during = run_all(test_python, 10, "during")
    time.sleep(6)  # the exporter retries, with backoff, for OTEL_EXPORTER_OTLP_TIMEOUT, then gives up
    assert side.proc.poll() is None, "otelproc keeps running while the collector is down"
    grpc_receiver.start()
    # gRPC reconnects with a backoff of its own: spans keep coming until one gets through.
    after: list[int] = []
    deadline = time.monotonic() + 60
    while not any(grpc_receiver.of_pid(p) for p in after) and time.monotonic() < deadline:
        after += run_all(test_python, 1, "after")
        time.sleep(1)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(after[-1]), timeout=30)
    assert side.stop() == 0
    dropped = summary(side)
    pids = before + during + after
    received = sum(len(grpc_receiver.of_pid(p)) for p in pids)
    assert dropped.get("export_failed", 0) > 0, side.lines
    # Nothing is lost in silence: each span arrived or was counted as failed. A batch the receiver took
    # as it stopped, before it could answer, is both (the client saw the error): so at least, not exactly.
    assert received + dropped["export_failed"] >= len(pids), side.lines
    assert all(len(grpc_receiver.of_pid(p)) <= 1 for p in pids), "a span arrived twice"
    assert any("export of" in line and "failed" in line for line in side.lines)


def test_tiny_ring_buffer_losses_are_counted_and_reconciled(sidecar, grpc_receiver, test_python):
    side = sidecar(*MATCH_TEST, "--ring-buffer-size", "4096", "--sweep-interval", "0.3", "--start-span-delay", "3600",
                   endpoint=grpc_receiver.endpoint, env=QUIET)
    big_env = {"PATH": "/usr/bin:/bin", "PADDING": "x" * 3000}  # one exec record fills most of the ring
    os.kill(side.proc.pid, signal.SIGSTOP)  # nothing reads the ring buffer now: it overflows
    try:
        children = [spawn(test_python, "import sys, time; sys.stdin.read()", stdin=subprocess.PIPE, env=big_env)
                    for _ in range(30)]
        time.sleep(1.5)
    finally:
        os.kill(side.proc.pid, signal.SIGCONT)
    time.sleep(2)  # two sweeps adopt what the kernel tracks but the table does not know
    os.kill(side.proc.pid, signal.SIGSTOP)
    try:
        for child in children:
            child.stdin.close()
        for child in children:
            assert child.wait(30) == 0
        time.sleep(0.5)
    finally:
        os.kill(side.proc.pid, signal.SIGCONT)
    pids = [c.pid for c in children]
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in pids), timeout=30)
    time.sleep(1.5)  # late duplicates, if any, would be here by now
    assert side.stop() == 0
    spans = [grpc_receiver.of_pid(p) for p in pids]
    assert all(len(s) == 1 for s in spans), "every process: one span, none lost, none twice"
    approximate = [s[0] for s in spans if s[0].attributes.get("otelproc.end.approximate")]
    assert approximate, "some exits were lost and closed by the sweep"
    assert all(s.status == "UNSET" and "process.exit.code" not in s.attributes for s in approximate)
    dropped = summary(side)
    assert dropped["ringbuf_full"] > 0
    assert any("dropped" in line and "ringbuf_full" in line for line in side.lines)


def test_kill9_and_restart_lose_nothing_duplicate_nothing(sidecar, grpc_receiver, test_python, tmp_path):
    # No pinning: what the state file alone carries across (test_restart.py has the pinned probe).
    args = ("--match", TEST_COMM, "--state-file", str(tmp_path / "state.json"), "--pin-dir", "",
            "--sweep-interval", "0.3", "--start-span-delay", "0.2")
    first = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    waiting = "import sys; sys.stdin.read()"
    a = spawn(test_python, waiting, "a", stdin=subprocess.PIPE)
    b = spawn(test_python, waiting, "b", stdin=subprocess.PIPE)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(a.pid, "started") and grpc_receiver.of_pid(b.pid, "started"))
    time.sleep(1)  # a sweep has written the state file
    first.kill()
    b.communicate(b"")  # b exits while no otelproc runs
    c = spawn(test_python, waiting, "c", stdin=subprocess.PIPE)  # c starts while no otelproc runs
    time.sleep(0.3)
    second = sidecar(*args, endpoint=grpc_receiver.endpoint, env=QUIET)
    assert any("resumed" in line for line in second.lines)
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(c.pid, "started"))
    time.sleep(0.5)  # a second 'started' span for a, if one were sent, would be here by now
    a.communicate(b"")
    c.communicate(b"")
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p.pid) for p in (a, b, c)), timeout=30)
    time.sleep(1.5)
    assert second.stop() == 0
    for p in (a, b, c):
        (lifetime,) = grpc_receiver.of_pid(p.pid)
        assert len(grpc_receiver.of_pid(p.pid, "started")) == 1, f"one 'started' span for {p.args}"
        (started,) = grpc_receiver.of_pid(p.pid, "started")  # the process span, with the scheme's id
        assert started.span_id == expected_ids(HOST_PIDNS, p.pid, int(lifetime.attributes["otelproc.process.key"].split("/")[3]))[1]
        assert lifetime.parent_span_id == started.span_id
    (a_span,) = grpc_receiver.of_pid(a.pid)
    assert a_span.attributes["otelproc.start.source"] == "exec"  # carried over from the state file
    assert a_span.attributes["process.exit.code"] == 0
    (b_span,) = grpc_receiver.of_pid(b.pid)
    assert b_span.attributes["otelproc.end.approximate"] is True
    assert b_span.attributes["otelproc.end.after"] < b_span.attributes["otelproc.end.before"]
    (c_span,) = grpc_receiver.of_pid(c.pid)
    assert c_span.attributes["otelproc.start.source"] == "adopted"


def test_sigterm_records_state_0600(sidecar, grpc_receiver, test_python, tmp_path):
    path = tmp_path / "state.json"
    side = sidecar(*MATCH_TEST, "--state-file", str(path), endpoint=grpc_receiver.endpoint, env=QUIET)
    child = spawn(test_python, "import sys; sys.stdin.read()", "--password=hunter2", stdin=subprocess.PIPE)
    try:
        time.sleep(1)  # the exec has been read
        assert side.stop() == 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        saved = json.loads(path.read_text())
        (record,) = [p for p in saved["processes"] if p["pid"] == child.pid]
        assert record["start_ticks"] == proc_start_ticks(child.pid)
        assert "hunter2" not in path.read_text() and "--password=***" in record["argv"]
    finally:
        child.communicate(b"")


SECRETS = ("hunter2", "tok3n-value", "pw1234", "k3y-value", "envsecret")


def test_secrets_never_leave(sidecar, grpc_receiver, test_python, tmp_path):
    side = sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint, env=QUIET)
    argv = ["pass", "--password=hunter2", "--token", "tok3n-value", "postgres://app:pw1234@db/x", "API_KEY=k3y-value"]
    child = spawn(test_python, *argv, env={"PATH": "/usr/bin", "DB_PASSWORD": "envsecret", "OTEL_SERVICE_NAME": "vault"})
    assert child.wait(30) == 0
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.attributes["process.command_args"][2:] == [
        "pass", "--password=***", "--token", "***", "postgres://app:***@db/x", "API_KEY=***",
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


def test_malformed_input_is_ignored_and_counted(sidecar, grpc_receiver, test_python, tmp_path):
    side = sidecar("--match", "python-otp*", "--adopt", "false", endpoint=grpc_receiver.endpoint,
                   env={"OTEL_METRIC_EXPORT_INTERVAL": "300"})
    bad_env = {"OTEL_RESOURCE_ATTRIBUTES": "=nokey,novalue,team=ok", "TRACEPARENT": "00-zzzz-01", "PATH": "/usr/bin"}
    first = spawn(test_python, "pass", env=bad_env)
    # A name, an argument and a path that are not UTF-8, through a link named with a 0xff byte
    # (to test_python: the file the kernel loads is named TEST_COMM, which the match list names).
    odd = tmp_path / "odd\udcffdir"
    odd.mkdir()
    link = os.fsencode(odd) + b"/python-otp\xff"
    os.symlink(test_python, link)
    second = os.posix_spawn(link, [link, b"-c", b"pass", b"arg-\xfe"], {b"PATH": b"/usr/bin"})
    big = spawn(test_python, "pass", "y" * 100_000)
    assert first.wait(30) == 0 and os.waitpid(second, 0)[1] == 0 and big.wait(30) == 0
    spans = grpc_receiver.wait_for(lambda _: [grpc_receiver.of_pid(p) for p in (first.pid, second, big.pid)]
                                   if all(grpc_receiver.of_pid(p) for p in (first.pid, second, big.pid)) else None)
    (first_span,), (odd_span,), (big_span,) = spans
    assert first_span.resource["team"] == "ok" and first_span.service == "otelproc"
    assert first_span.parent_span_id == "" and first_span.status == "OK"
    assert odd_span.attributes["process.executable.name"] == "python-otp\\xff"  # and the comm, so no otelproc.comm
    assert odd_span.attributes["process.command_args"][-1] == "arg-\\xfe"
    assert odd_span.attributes["process.executable.path"].endswith("/python-otp\\xff")
    assert big_span.attributes["otelproc.truncated"] == ["argv"]
    assert len(big_span.attributes["process.command_args"][-1]) < 100_000
    points = grpc_receiver.wait_for(
        lambda _: (m := grpc_receiver.metric_points()).get(("otelproc.input.malformed", (("what", "traceparent"),)))
        and m.get(("otelproc.input.malformed", (("what", "resource_attributes"),))) and m
    )
    assert points[("otelproc.input.malformed", (("what", "traceparent"),))] == 1
    assert points[("otelproc.input.malformed", (("what", "resource_attributes"),))] == 2
    assert side.proc.poll() is None


def test_self_telemetry_and_health(sidecar, grpc_receiver, test_python):
    port = free_port()
    side = sidecar(*MATCH_TEST, "--health-port", str(port), endpoint=grpc_receiver.endpoint,
                   env={"OTEL_METRIC_EXPORT_INTERVAL": "300"})
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            assert answer.status == 200
    with pytest.raises(urllib.error.HTTPError, match="404"):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
    run_all(test_python, 3, "metrics")
    want = {
        ("otelproc.events", (("kind", "exec"),)): 3,
        ("otelproc.events", (("kind", "exit"),)): 3,
        ("otelproc.spans", (("otelproc.span", "lifetime"),)): 3,
        ("otelproc.spans.exported", ()): 3,
    }
    points = grpc_receiver.wait_for(lambda _: (m := grpc_receiver.metric_points()) and all(m.get(k, 0) >= v for k, v in want.items()) and m)
    for name in ("otelproc.processes.tracked", "otelproc.kernel.tracked", "otelproc.ringbuf.used", "otelproc.ringbuf.size"):
        assert (name, ()) in points
    assert points[("otelproc.ringbuf.size", ())] == 8 << 20
    resource = {kv.key: kv.value.string_value for kv in grpc_receiver.metric_requests[-1].resource_metrics[0].resource.attributes}
    assert resource["service.name"] == "otelproc"
    assert side.stop() == 0


# The settings otelproc refuses before it looks at its privileges are tests/unit/test_cli.py's;
# a state file it cannot write is found only once it holds them.
@pytest.mark.parametrize("bad", [("--state-file", "/proc/nope/state.json")])
def test_bad_configuration_is_one_line(bad):
    assert_one_line_error(run_with(*bad), bad[0])
