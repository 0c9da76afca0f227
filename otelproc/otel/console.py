"""Spans as one readable line each, for a person at a terminal (`--exporter console`).

    17:42:03.127  python3.11 -c             pid 41873 <- 41790     1.02 s  exit status 0
    17:42:03.140  ↳ git                     pid 41875 <- 41873    12.0 ms  exit status 0
    17:42:06.541  uvicorn worker started    pid 41880 <- 41873          -  running

When it started (local time), the span's name, pid <- parent pid, how long the
process lived and how it ended. ↳ marks a process that matches no --match name
itself (a shell or git a Python process ran): it is tracked because its parent
is. Every attribute is in `--exporter console-json`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Sequence, TextIO

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode

from otelproc.matching import MatchRule, any_match

NAME_WIDTH = 24
CHILD_MARK = "↳ "  # before the name of a process tracked only because its parent is


def duration_text(ns: int) -> str:
    """Three significant figures up to a minute, then minutes and hours."""
    seconds = ns / 1e9
    if seconds < 1e-3:
        return f"{ns / 1e3:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def ending(span: ReadableSpan) -> str:
    """How the process ended, in the words of the span's status; 'running' for a 'started' span."""
    attributes = span.attributes or {}
    if attributes.get("otelproc.span") == "started":
        return "running"
    if span.status.status_code is StatusCode.ERROR:
        return span.status.description or "error"
    if "otelproc.exit.reason" in attributes:  # stopped cleanly by a signal: OK, and an OK status has no words
        return str(attributes["otelproc.exit.reason"])
    if "process.exit.code" in attributes:
        return f"exit status {attributes['process.exit.code']!s}"
    if "otelproc.end.before" in attributes:
        return "ended while otelproc was down, exit not seen"
    return "ended, exit not seen"


def line(span: ReadableSpan, child: bool = False) -> str:
    attributes = span.attributes or {}
    start_ns = span.start_time or 0
    clock = time.strftime("%H:%M:%S", time.localtime(start_ns // 1_000_000_000))
    millis = start_ns // 1_000_000 % 1000
    started = attributes.get("otelproc.span") == "started"
    duration = "-" if started else duration_text((span.end_time or start_ns) - start_ns)
    pids = f"pid {attributes.get('process.pid', '?')} <- {attributes.get('process.parent_pid', '?')}"
    name = CHILD_MARK + span.name if child else span.name
    return f"{clock}.{millis:03d}  {name:<{NAME_WIDTH}}  {pids:<20} {duration:>8}  {ending(span)}"


class ConsoleLineExporter(SpanExporter):
    """Writes one line per span to a text stream (stdout by default).

    Given the match list, it tells the processes that match it from their descendants that do not
    (a shell, git, tr that a Python process ran): those are marked, or left out with hide_children.
    """

    def __init__(
        self, out: TextIO = sys.stdout, match: tuple[MatchRule, ...] | None = None, hide_children: bool = False
    ) -> None:
        self.out = out
        self.match = match
        self.hide_children = hide_children
        self._lock = threading.Lock()

    def is_child(self, span: ReadableSpan) -> bool:
        """Tracked only because its parent is: its executable matches no name on the list."""
        if self.match is None:
            return False
        name = (span.attributes or {}).get("process.executable.name")
        return not any_match(self.match, str(name) if name is not None else None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        marked = ((span, self.is_child(span)) for span in spans)
        text = "".join(line(span, child) + "\n" for span, child in marked if not (child and self.hide_children))
        with self._lock:
            self.out.write(text)
            self.out.flush()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
