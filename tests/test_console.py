"""Console output of `otelproc run` on the real kernel: one aligned line per span (`--exporter console`), every
span in full (`console-json`). The line format on its own: tests/unit/otel/test_console.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

from support.subjects import MATCH_TEST, TEST_COMM

# 17:42:03.127  python3 -c    pid 41873 <- 41790    1.02 s  exit status 0
LINE = re.compile(r"(\d\d:\d\d:\d\d\.\d{3})  (.+?) +pid (\d+) <- (\d+) +(\S+(?: \S+)?)  (.+)")


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
    by_pid = {int(m.group(3)): m for m in map(LINE.fullmatch, (text.rstrip("\n") for text in side.stdout_lines)) if m}
    assert by_pid[killed.pid].group(6) == "killed by SIGKILL from itself"
    assert by_pid[failed.pid].group(6) == "exit status 3"
    assert by_pid[failed.pid].group(2) == f"{TEST_COMM} -c"
    assert all(LINE.fullmatch(text.rstrip("\n")) for text in side.stdout_lines), side.stdout_lines
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
        parsed = [LINE.fullmatch(text.rstrip("\n")) for text in side.stdout_lines]
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
