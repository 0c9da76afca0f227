"""`otelproc run` end to end: real kernel, real processes, a real OTLP receiver in the test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import psutil

from support import REPO
from support.identity import HOST_PIDNS, expected_ids
from support.ports import free_port
from support.servers import process_span_of
from support.subjects import MATCH_TEST, TEST_COMM, proc_start_ticks, spawn

APPS = REPO / "tests" / "apps"
CARRIER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CARRIER_SPAN = "b7ad6b7169203331"


def test_uvicorn_master_and_workers_form_one_trace(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    port = free_port()
    master = subprocess.Popen(
        [test_python, "-m", "uvicorn", "hello:app", "--app-dir", str(APPS), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        workers = set()
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            try:
                workers.add(int(httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text))
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(workers) == 2, "uvicorn did not serve from two workers"
        assert workers == {c.pid for c in psutil.Process(master.pid).children() if c.pid in workers}
        master_ticks = proc_start_ticks(master.pid)
    finally:
        master.send_signal(signal.SIGTERM)
        master.wait(30)
    assert master.returncode == 0

    spans = grpc_receiver.wait_for(
        lambda _: len(grpc_receiver.of_pid(master.pid)) == 1 and all(grpc_receiver.of_pid(w) for w in workers)
    )
    assert spans
    process_spans = {s.attributes["process.pid"]: s for s in grpc_receiver.process_spans().values()}
    (root,) = grpc_receiver.of_pid(master.pid)
    trace_id, span_id = expected_ids(HOST_PIDNS, master.pid, master_ticks)
    # Its process span: its 'started' span if it ran past the delay (its lifetime span then under it), else
    # its lifetime span.
    root_node = process_spans[master.pid]
    assert (root_node.trace_id, root_node.span_id, root_node.parent_span_id) == (trace_id, span_id, "")
    assert root is root_node or (root.trace_id, root.parent_span_id) == (trace_id, span_id)
    assert root.name == "uvicorn"
    assert root.attributes["process.command_args"][1:4] == ["-m", "uvicorn", "hello:app"]
    assert root.attributes["process.parent_pid"] == os.getpid()
    assert root.attributes["process.exit.code"] == 0 and root.status == "OK"
    for pid in workers:
        (worker,) = grpc_receiver.of_pid(pid)
        node = process_spans[pid]
        assert (node.trace_id, node.parent_span_id) == (trace_id, span_id)
        assert worker is node or (worker.trace_id, worker.parent_span_id) == (trace_id, node.span_id)
        assert worker.attributes["process.parent_pid"] == master.pid
        assert worker.attributes["otelproc.start.source"] == "fork"
        assert "--multiprocessing-fork" in worker.attributes["process.command_args"]
        assert worker.name == "uvicorn worker"
        assert [e[0] for e in worker.events if e[0] != "signal"] == ["exec"]
        # uvicorn workers shut down gracefully on the master's SIGTERM, then re-raise it: the kernel
        # says SIGTERM, and a requested, orderly stop is not an error.
        assert worker.status == "OK" and "error.type" not in worker.attributes
        assert worker.attributes["otelproc.exit.signal"] == signal.SIGTERM
        assert worker.attributes["otelproc.exit.sender_pid"] == master.pid
        assert worker.attributes["otelproc.exit.reason"] == f"stopped by SIGTERM from pid {master.pid} ({TEST_COMM})"
        assert [e[2]["otelproc.signal.sender"] for e in worker.events if e[0] == "signal"] == ["self"]
        assert root.start_ns <= worker.start_ns <= worker.end_ns <= root.end_ns


def test_service_name_and_exit_status(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", "import sys; sys.exit(3)"], env={"OTEL_SERVICE_NAME": "billing"})
    assert child.wait() == 3
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.service == "billing"
    assert span.status == "ERROR" and span.status_message == "exit status 3"
    assert span.attributes["error.type"] == "3" and span.attributes["process.exit.code"] == 3
    assert span.kind == 1  # SPAN_KIND_INTERNAL
    assert span.resource["host.name"] == socket.gethostname() and span.resource["os.type"] == "linux"
    assert span.attributes["process.executable.path"] == test_python
    # What would repeat another attribute is left out: the vpid is the pid here, the comm the executable's name.
    assert "process.vpid" not in span.attributes and "otelproc.comm" not in span.attributes
    # What it used: CPU and peak memory by default, the counters only when --usage asks.
    assert span.attributes["process.cpu.time.user"] >= 0 and span.attributes["otelproc.memory.peak"] > 0
    assert not [k for k in span.attributes if k.startswith(("process.paging", "process.context", "process.disk"))]
    assert span.attributes["process.owner"] == "root" and span.attributes["process.user.id"] == os.getuid()


def test_traceparent_makes_a_child_of_the_carrier(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    env = {"TRACEPARENT": f"00-{CARRIER_TRACE}-{CARRIER_SPAN}-01", "TRACESTATE": "vendor=x"}
    child = subprocess.Popen([test_python, "-c", "pass"], env=env)
    assert child.wait() == 0
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    # Its process span is the carrier's child: the lifetime span, unless the child outlived --start-span-delay.
    process = process_span_of(grpc_receiver, child.pid)
    assert (process.trace_id, process.parent_span_id) == (CARRIER_TRACE, CARRIER_SPAN)
    assert span is process or span.parent_span_id == process.span_id
    assert span.status == "OK"


def test_sigkill_is_an_error_naming_the_signal(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", "import time; time.sleep(60)"])
    time.sleep(0.5)
    child.kill()
    child.wait()
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    own_comm = Path("/proc/self/comm").read_text().strip()
    assert span.status == "ERROR" and span.status_message == f"killed by SIGKILL from pid {os.getpid()} ({own_comm})"
    assert span.attributes["error.type"] == "SIGKILL" and span.attributes["otelproc.exit.signal"] == 9
    assert "process.exit.code" not in span.attributes


SAME_PID_TWICE = """
import os, subprocess, sys, time
spans = []
for _ in range(2):
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
        f.write('99')
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.05)'])
    print(child.pid, open(f'/proc/{child.pid}/stat').read().rsplit(')', 1)[1].split()[19], flush=True)
    child.wait()
    time.sleep(0.05)  # a later start time, in clock ticks
print(os.stat('/proc/self/ns/pid').st_ino, flush=True)
"""


def test_two_processes_with_the_same_pid_get_two_spans(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", test_python, "-c", SAME_PID_TWICE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    (pid_a, ticks_a), (pid_b, ticks_b), pidns = (out[0], out[1]), (out[2], out[3]), int(out[4])
    assert pid_a == pid_b == "100" and ticks_a != ticks_b

    def both(spans):
        return [
            s
            for s in grpc_receiver.lifetimes()
            if s.attributes["process.vpid"] == 100 and s.attributes["otelproc.process.key"].split("/")[1] == str(pidns)
        ]

    spans = grpc_receiver.wait_for(lambda _: len(both(_)) == 2 and both(_))
    assert {s.span_id for s in spans} == {expected_ids(pidns, 100, int(t))[1] for t in (ticks_a, ticks_b)}


def test_restarted_sidecar_exports_one_span_with_the_scheme_ids(sidecar, grpc_receiver, test_python):
    first = sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    ticks = proc_start_ticks(child.pid)
    time.sleep(0.5)
    first.kill()
    second = sidecar("--match", TEST_COMM, endpoint=grpc_receiver.endpoint)  # adopts
    assert second.proc.pid != first.proc.pid
    child.communicate(b"")
    assert child.returncode == 0
    spans = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    time.sleep(2)  # anything duplicated would have arrived by now
    (span,) = grpc_receiver.of_pid(child.pid)
    assert spans == [span]
    assert (span.trace_id, span.span_id) == expected_ids(HOST_PIDNS, child.pid, ticks)
    assert span.attributes["otelproc.start.source"] == "adopted"
    assert span.attributes["process.exit.code"] == 0


def test_otlp_http(sidecar, http_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=http_receiver.endpoint, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    child = subprocess.Popen([test_python, "-c", "import sys; sys.exit(4)"])
    assert child.wait() == 4
    (span,) = http_receiver.wait_for(lambda _: http_receiver.of_pid(child.pid))
    assert span.status_message == "exit status 4"


def test_running_process_is_visible_within_5_seconds(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", "import time; time.sleep(60)"])
    started = time.monotonic()
    try:
        (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid, role="started"), timeout=5)
        seen_after = time.monotonic() - started
        trace_id, span_id = expected_ids(HOST_PIDNS, child.pid, proc_start_ticks(child.pid))
        assert (span.trace_id, span.span_id, span.parent_span_id) == (trace_id, span_id, "")  # the process span
        assert span.name.endswith(" started") and span.attributes["process.pid"] == child.pid
        assert grpc_receiver.of_pid(child.pid) == [], "the lifetime span waits for the exit"
        print(f"visible after {seen_after:.2f} s")
    finally:
        child.kill()
        child.wait()
    (lifetime,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert lifetime.parent_span_id == span.span_id


def test_services_share_one_export_grouped_by_resource(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint, env={"OTEL_BSP_SCHEDULE_DELAY": "3000"})
    children = [
        subprocess.Popen(
            [test_python, "-c", "pass"], env={"OTEL_SERVICE_NAME": name, "OTEL_RESOURCE_ATTRIBUTES": f"team={name}x"}
        )
        for name in ("alpha", "beta")
    ]
    for child in children:
        child.wait()
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(c.pid) for c in children))
    by_service = {grpc_receiver.of_pid(c.pid)[0].service: grpc_receiver.of_pid(c.pid)[0] for c in children}
    assert by_service["alpha"].resource["team"] == "alphax" and by_service["beta"].resource["team"] == "betax"
    mixed = [
        r
        for r in grpc_receiver.requests
        if {rs.resource.attributes[0].key for rs in r.resource_spans}
        and {
            kv.value.string_value
            for rs in r.resource_spans
            for kv in rs.resource.attributes
            if kv.key == "service.name"
        }
        >= {"alpha", "beta"}
    ]
    assert mixed, "alpha and beta spans should travel in one export request, as two resources"


def test_malformed_input_is_ignored_and_counted(sidecar, grpc_receiver, test_python, tmp_path):
    side = sidecar(
        "--match",
        "python-otp*",
        "--adopt",
        "false",
        endpoint=grpc_receiver.endpoint,
        env={"OTEL_METRIC_EXPORT_INTERVAL": "300"},
    )
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
    spans = grpc_receiver.wait_for(
        lambda _: (
            [grpc_receiver.of_pid(p) for p in (first.pid, second, big.pid)]
            if all(grpc_receiver.of_pid(p) for p in (first.pid, second, big.pid))
            else None
        )
    )
    (first_span,), (odd_span,), (big_span,) = spans
    assert first_span.resource["team"] == "ok" and first_span.service == "otelproc"
    assert first_span.parent_span_id == "" and first_span.status == "OK"
    assert odd_span.attributes["process.executable.name"] == "python-otp\\xff"  # and the comm, so no otelproc.comm
    assert odd_span.attributes["process.command_args"][-1] == "arg-\\xfe"
    assert odd_span.attributes["process.executable.path"].endswith("/python-otp\\xff")
    assert big_span.attributes["otelproc.truncated"] == ["argv"]
    assert len(big_span.attributes["process.command_args"][-1]) < 100_000
    points = grpc_receiver.wait_for(
        lambda _: (
            (m := grpc_receiver.metric_points()).get(("otelproc.input.malformed", (("what", "traceparent"),)))
            and m.get(("otelproc.input.malformed", (("what", "resource_attributes"),)))
            and m
        )
    )
    assert points[("otelproc.input.malformed", (("what", "traceparent"),))] == 1
    assert points[("otelproc.input.malformed", (("what", "resource_attributes"),))] == 2
    assert side.proc.poll() is None
