"""Console output: one aligned line per span (`--exporter console`).

tests/test_console.py runs `otelproc run` with each console exporter on the real kernel.
"""

from __future__ import annotations

import io
import re

from otelproc.otel.console import ConsoleLineExporter, duration_text
from support.events import representative_spans


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
    assert endings == [
        "running",
        "exit status 3",
        "running",
        "killed by SIGSEGV (core dumped)",
        "running",
        "exit status 0",
        "running",
        "stopped by SIGTERM from pid 812 (gunicorn)",
        "running",
        "killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup app.service)",
        "ended, exit not seen",
        "ended while otelproc was down, exit not seen",
        "running",
    ]
    assert [m.group(3) for m in parsed[:2]] == [str(spans[0].attributes["process.pid"])] * 2


def test_durations_read_like_a_person_writes_them():
    assert [
        duration_text(ns) for ns in (420_000, 21_340_000, 1_024_000_000, 125 * 10**9, 3 * 3600 * 10**9 + 120 * 10**9)
    ] == ["420 µs", "21.3 ms", "1.02 s", "2m05s", "3h02m"]
