"""Console output: one aligned line per span (`--exporter console`), every span in full (`console-json`)."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time

from conftest import MATCH_TEST, TEST_COMM
from otelproc.otel.console import ConsoleLineExporter, duration_text
from test_docs import representative_spans

# 17:42:03.127  python3 -c    pid 41873 <- 41790    1.02 s  exit status 0
LINE = re.compile(r"(\d\d:\d\d:\d\d\.\d{3})  (.+?) +pid (\d+) <- (\d+) +(\S+(?: \S+)?)  (.+)")


def test_one_aligned_line_per_span_says_how_it_ended():
    spans = representative_spans()
    out = io.StringIO()
    ConsoleLineExporter(out).export(spans)
    lines = out.getvalue().splitlines()
    assert len(lines) == len(spans)
    parsed = [LINE.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert len({line.index(" pid ") for line in lines}) == 1, "the pid column lines up"
    assert len({m.end(5) for m in parsed}) == 1, "durations are right-aligned"
    endings = [m.group(6) for m in parsed]
    assert endings == ["running", "exit status 3", "running", "killed by SIGSEGV (core dumped)",
                       "running", "exit status 0", "running", "stopped by SIGTERM from pid 812 (gunicorn)",
                       "running", "killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup app.service)",
                       "ended, exit not seen",
                       "ended while otelproc was down, exit not seen"]
    assert [m.group(3) for m in parsed[:2]] == [str(spans[0].attributes["process.pid"])] * 2


def test_durations_read_like_a_person_writes_them():
    assert [duration_text(ns) for ns in (420_000, 21_340_000, 1_024_000_000, 125 * 10**9, 3 * 3600 * 10**9 + 120 * 10**9)] \
        == ["420 µs", "21.3 ms", "1.02 s", "2m05s", "3h02m"]


def wait_lines(side, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(side.stdout_lines) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return list(side.stdout_lines)


def test_run_prints_a_line_per_process(sidecar, test_python):
    side = sidecar(*MATCH_TEST, "--exporter", "console")
    killed = subprocess.Popen([test_python, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    failed = subprocess.Popen([test_python, "-c", "raise SystemExit(3)"])
    assert killed.wait(30) == -signal.SIGKILL and failed.wait(30) == 3
    assert side.stop() == 0
    by_pid = {int(m.group(3)): m for m in map(LINE.fullmatch, (l.rstrip("\n") for l in side.stdout_lines)) if m}
    assert by_pid[killed.pid].group(6) == "killed by SIGKILL from itself"
    assert by_pid[failed.pid].group(6) == "exit status 3"
    assert by_pid[failed.pid].group(2) == f"{TEST_COMM} -c"
    assert all(LINE.fullmatch(l.rstrip("\n")) for l in side.stdout_lines), side.stdout_lines
    assert "printing one line per span" in side.wait_line("attached;")


def test_console_json_prints_every_span_in_full(sidecar, test_python):
    side = sidecar(*MATCH_TEST, "--exporter", "console-json")
    child = subprocess.Popen([test_python, "-c", "raise SystemExit(5)"])
    assert child.wait(30) == 5
    assert side.stop() == 0
    spans = [json.loads(line) for line in side.stdout_lines]
    (span,) = [s for s in spans if s["attributes"].get("process.pid") == child.pid]
    assert span["attributes"]["process.exit.code"] == 5 and span["status"]["description"] == "exit status 5"
    assert span["attributes"]["otelproc.span"] == "lifetime"


def test_children_that_match_no_name_are_marked_or_left_out(sidecar, test_python):
    """A tracked python (started from pytest, which this sidecar does not track) runs sh, which runs tr:
    both are tracked through their parent, and the console says so with ↳, or leaves them out."""
    script = "import subprocess; subprocess.run(['sh', '-c', 'tr a b </dev/null; true'], check=True)"
    for mode in ("show", "hide"):
        side = sidecar(*MATCH_TEST, "--exporter", "console", "--console-children", mode)
        parent = subprocess.Popen([test_python, "-c", script])
        assert parent.wait(30) == 0
        assert side.stop() == 0
        parsed = [LINE.fullmatch(l.rstrip("\n")) for l in side.stdout_lines]
        assert all(parsed), side.stdout_lines
        (python,) = [m for m in parsed if int(m.group(3)) == parent.pid]
        assert python.group(2) == f"{TEST_COMM} -c", "matched by its own name: no mark"
        children = [m for m in parsed if int(m.group(4)) == parent.pid]
        if mode == "hide":
            assert children == [], side.stdout_lines
            assert "processes tracked only through their parent left out" in side.wait_line("attached;")
            continue
        (sh,) = children
        assert sh.group(2) == "↳ sh" and sh.group(6) == "exit status 0"
        (tr,) = [m for m in parsed if m.group(4) == sh.group(3)]
        assert tr.group(2) == "↳ tr"
        assert len({line.index(" pid ") for line in side.stdout_lines}) == 1, "the mark keeps the columns"
