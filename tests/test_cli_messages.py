"""The lines a user reads from `otelproc`, exactly: no "[Errno N]", no empty choice, no "1 processes",
no claim that is not true yet, and one line (never a traceback) for bad input. Real subprocesses."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO
from support.cli import assert_one_line_error, run_with
from support.subjects import MATCH_TEST, TEST_COMM

OTELPROC = [PYTHON, "-m", "otelproc"]
NOTHING_KEPT = ("--match", TEST_COMM, "--adopt", "false", "--pin-dir", "", "--state-file", "")
QUICK = (*NOTHING_KEPT, "--exporter", "console", "--duration", "1")


def otelproc(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELPROC_"))}
    return subprocess.run(
        [*OTELPROC, *args], capture_output=True, text=True, cwd=REPO, timeout=60, env={**base, **(env or {})}
    )


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line of a failed command, which must exit 2 (the user can fix it)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_second_run_on_one_pin_dir_names_the_first(sidecar):
    first = sidecar(*MATCH_TEST)
    pin_dir = first.env["OTELPROC_PIN_DIR"]
    second = subprocess.run(
        [*OTELPROC, "run", *MATCH_TEST], env=first.env, capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert error_line(second) == (
        f"otelproc: error: another otelproc (pid {first.proc.pid}) owns the pinned probe in {pin_dir}; stop it first"
    )


def test_a_wrong_protocol_lists_the_choices_and_names_where_it_came_from():
    assert (
        error_line(otelproc("run", "--otlp-protocol", "http"))
        == "otelproc: error: --otlp-protocol: 'http': choose one of grpc, http/protobuf"
    )
    # The SDK's variable, read when no flag says which exporter: refused in one line, as the flag is.
    assert (
        error_line(otelproc("run", *NOTHING_KEPT, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http"}))
        == "otelproc: error: OTEL_EXPORTER_OTLP_PROTOCOL: 'http': choose one of grpc, http/protobuf"
    )


def test_a_traces_exporter_otelproc_does_not_have_is_refused_not_ignored():
    # Refused, not ignored: auto in its place would give a user who asked for zipkin the console.
    assert (
        error_line(otelproc("run", *NOTHING_KEPT, env={"OTEL_TRACES_EXPORTER": "zipkin"}))
        == "otelproc: error: OTEL_TRACES_EXPORTER: 'zipkin': choose one of auto, otlp, console, console-json"
    )
    # Checked as the flag is: the same choices, in the same words.
    assert (
        error_line(otelproc("run", *NOTHING_KEPT, "--exporter", "zipkin"))
        == "otelproc: error: --exporter: 'zipkin': choose one of auto, otlp, console, console-json"
    )
    # The flag decides when both are given; the variable is only its default.
    chosen = otelproc("run", *QUICK, env={"OTEL_TRACES_EXPORTER": "zipkin"})
    assert chosen.returncode == 0, chosen.stderr


def test_settings_the_otlp_exporter_refuses_are_one_line_naming_them_not_their_values():
    refused = otelproc(
        "run",
        *QUICK,
        "--exporter",
        "otlp",
        "--otlp-endpoint",
        "http://127.0.0.1:9",
        env={"OTEL_EXPORTER_OTLP_TIMEOUT": "soon", "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret"},
    )
    assert error_line(refused) == (
        "otelproc: error: the otlp exporter refused its settings (could not convert string "
        "to float: 'soon'); check --otlp-endpoint, OTEL_EXPORTER_OTLP_HEADERS, "
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    # An endpoint that names no collector is refused before the exporter is made, naming the flag.
    assert error_line(otelproc("run", *QUICK, "--exporter", "otlp", "--otlp-endpoint", "http://[::1")) == (
        "otelproc: error: --otlp-endpoint http://[::1: not a collector's address (Invalid IPv6 URL); "
        "give host:port or http://host:port"
    )


def test_sizes_the_kernel_cannot_take_are_refused_before_loading():
    assert (
        error_line(otelproc("events", "--max-processes", "99999999999"))
        == "otelproc: error: --max-processes: 99999999999 is more processes than a Linux host can have (4194304)"
    )
    assert (
        error_line(otelproc("events", "--ring-buffer-size", str(1 << 32)))
        == "otelproc: error: --ring-buffer-size: 4294967296 must be a power of two from 4096 to 2147483648 bytes"
    )


def test_a_scope_that_is_no_cgroup_v2_directory(tmp_path):
    assert (
        error_line(otelproc("events", "--match", TEST_COMM, "--scope", f"cgroup={tmp_path}"))
        == f"otelproc: error: --scope cgroup={tmp_path}: not a cgroup v2 directory"
    )


def test_a_state_file_that_is_a_directory_is_refused_at_start(tmp_path):
    result = otelproc("run", *QUICK, "--state-file", str(tmp_path))
    assert error_line(result) == f"otelproc: error: --state-file {tmp_path}: is a directory; give the path of a file"


def test_an_unreadable_state_file_says_why_without_errno(tmp_path):
    path = tmp_path / "state.json"
    path.symlink_to(path)  # a loop: reading it fails with ELOOP
    result = otelproc("run", *QUICK, "--state-file", str(path))
    assert result.returncode == 0, result.stderr
    assert (
        f"otelproc: state file {path} is unreadable (Too many levels of symbolic links); move it away or pass "
        "another --state-file; starting afresh" in result.stderr.splitlines()
    )
    assert "Errno" not in result.stderr


def test_a_state_file_failing_while_running_says_why_without_errno(sidecar, test_python, tmp_path):
    path = tmp_path / "state.json"
    side = sidecar(*MATCH_TEST, "--state-file", str(path))
    path.unlink()
    path.mkdir()  # the next write cannot rename its file over a directory
    (path / "keep").touch()
    assert subprocess.run([test_python, "-c", "pass"], timeout=30).returncode == 0  # a change to write
    line = side.wait_line("state_file failed")
    assert line == f"otelproc: state_file failed: Is a directory ({path}.tmp -> {path}); skipped, 1 so far"
    side.stop()
    assert not any("Errno" in line for line in side.lines), side.lines


def test_counts_of_one_are_singular(sidecar, test_python):
    subject = subprocess.Popen([test_python, "-c", "import time; time.sleep(60)"])
    try:
        side = sidecar("--match", TEST_COMM, "--adopt", "true", "--exporter", "console")
        assert "otelproc: adopted 1 running process (0 vanished while read, 0 unreadable)" in side.lines
        assert "otelproc: ready; 1 process tracked" in side.lines
        deadline = time.monotonic() + 20
        while not side.stdout_lines and time.monotonic() < deadline:  # its 'started' span
            time.sleep(0.1)
        assert side.stop() == 0
        assert re.fullmatch(
            r"otelproc: stopped; 0 events, 1 span, 1 exported, dropped: none; 1 process still "
            r"running; failed: none; longest away from the ring buffer: \d+ ms; on SIGTERM, in [\d.]+ s; "
            r"the probe stays pinned in \S+ and keeps recording for the next otelproc; "
            r"`otelproc detach` removes it",
            side.lines[-1],
        ), side.lines
    finally:
        subject.kill()
        subject.wait()


def test_detach_while_otelproc_runs_says_it_still_runs_and_it_does(sidecar, test_python):
    first = sidecar(*MATCH_TEST, "--exporter", "console")
    assert first.stop() == 0  # the probe stays pinned; the next one resumes it
    env = first.env
    side = sidecar(*MATCH_TEST, "--exporter", "console", env=env)
    assert any("resumed the probe" in line for line in side.lines), side.lines
    pin_dir, state_file = env["OTELPROC_PIN_DIR"], env["OTELPROC_STATE_FILE"]
    detach = subprocess.run([*OTELPROC, "detach"], env=env, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert detach.returncode == 0, detach.stderr
    assert detach.stderr.splitlines() == [
        f"otelproc: unpinned the probe in {pin_dir}, and removed the state file; "
        f"otelproc (pid {side.proc.pid}) still runs it, until it stops"
    ]
    subject = subprocess.Popen([test_python, "-c", "raise SystemExit(4)"])
    assert subject.wait(30) == 4
    assert side.stop() == 0
    assert any(f"pid {subject.pid} " in line and "exit status 4" in line for line in side.stdout_lines), (
        side.stdout_lines
    )  # the probe still ran: the process after the detach has its span
    assert side.lines[-1].endswith(
        "; the probe was detached (`otelproc detach`) and goes with this process, with the state file"
    ), side.lines
    assert not Path(pin_dir).exists() and not Path(state_file).exists()


def test_detach_touches_nothing_off_bpffs(tmp_path):
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    result = otelproc("detach", "--pin-dir", str(tmp_path), "--state-file", "")
    assert error_line(result) == (
        f"otelproc: error: --pin-dir {tmp_path}: not on a bpffs mount, so no probe is pinned there; nothing removed"
    )
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine"


def test_detach_without_a_pin_directory_says_so():
    result = otelproc("detach", "--pin-dir", "", "--state-file", "")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["otelproc: nothing pinned (no --pin-dir: otelproc pins nothing)"]


# The settings otelproc refuses before it looks at its privileges are tests/unit/test_cli.py's;
# a state file it cannot write is found only once it holds them.
@pytest.mark.parametrize("bad", [("--state-file", "/proc/nope/state.json")])
def test_bad_configuration_is_one_line(bad):
    assert_one_line_error(run_with(*bad), bad[0])
