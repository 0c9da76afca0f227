"""`otelproc events` and `otelproc check` as a user runs them: real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from support import PYTHON, REPO
from support.cli import OTELPROC, assert_one_line_error, otelproc

KEYS = {
    "kind",
    "time",
    "pid",
    "ppid",
    "vpid",
    "tid",
    "uid",
    "gid",
    "comm",
    "exe",
    "argv",
    "start_time",
    "exit_code",
    "signal",
    "core_dumped",
    "cgroup_id",
    "cgroup",
}


def start_events(*args: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*OTELPROC, "events", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    line = proc.stderr.readline()  # "attached; ..." once the probe is live
    assert "attached" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
    assert time.monotonic() < deadline
    return proc


def test_events_json_lines_and_duration():
    proc = start_events("--duration", "3")
    try:
        child = subprocess.run([PYTHON, "-c", "import sys; sys.exit(2)"], timeout=30)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    mine = [e for e in events if e["argv"] == child.args or (e["kind"] == "exit" and e["exit_code"] == 2)]
    kinds = [e["kind"] for e in mine]
    assert "exec" in kinds and "exit" in kinds
    for event in mine:
        assert KEYS <= set(event)
        assert event["time"].endswith("Z") and len(event["time"].split(".")[1]) == 10  # 9 digits and Z
        assert event["start_time"].endswith("Z")
    exit_event = [e for e in mine if e["kind"] == "exit"][0]
    assert exit_event["exit_code"] == 2 and exit_event["signal"] is None and exit_event["core_dumped"] is False
    assert "lost in the kernel: ringbuf_full=0, tracked_map_full=0, unattended=0" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_events_stops_cleanly_on_signal(signum):
    proc = start_events()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert "stopped" in err


def test_without_privileges_as_nobody():
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *OTELPROC, "events"],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert_one_line_error(result, "CAP_BPF")


def test_without_privileges_root_without_capabilities():
    result = subprocess.run(
        ["capsh", "--drop=cap_bpf,cap_perfmon,cap_sys_admin", "--", "-c", " ".join([*OTELPROC, "events"])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert_one_line_error(result, "CAP_BPF")


def test_check_reports_each_thing():
    result = otelproc("check")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line[6:].split(":")[0] for line in lines] == ["kernel", "BTF", "capabilities", "libbpf", "BPF programs"]
    assert all(line.startswith("ok") for line in lines)


def test_check_without_privileges_fails_with_reason():
    result = subprocess.run(
        [
            "capsh",
            "--drop=cap_bpf,cap_perfmon,cap_sys_admin,cap_sys_ptrace",
            "--",
            "-c",
            " ".join([*OTELPROC, "check"]),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 2
    assert "missing capabilities: CAP_BPF" in result.stderr and "Traceback" not in result.stderr
