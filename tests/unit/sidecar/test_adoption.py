"""Adoption races: a process exits, or its pid is reused, between two reads of /proc.

The real race cannot be timed from a test, so the second read is made to see it.
"""

from __future__ import annotations

import os
import subprocess
import sys

from otelproc import procfs
from otelproc.clock import BootClock
from otelproc.sidecar import adoption


def test_adoption_skips_a_process_that_exits_while_read(monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    real_environ = procfs.environ

    def exits_meanwhile(pid: int) -> bytes:
        child.kill()
        child.wait()
        return real_environ(pid)

    monkeypatch.setattr(procfs, "environ", exits_meanwhile)
    stats = adoption.AdoptionStats()
    assert adoption.snapshot_or_none(child.pid, BootClock(), None, stats) is None
    assert stats.vanished == 1


def test_adoption_skips_a_pid_reused_while_read(monkeypatch):
    real_stat = procfs.stat
    reads = []

    def reused(pid: int) -> procfs.Stat:
        stat = real_stat(pid)
        reads.append(pid)
        return stat._replace(
            start_ticks=stat.start_ticks + (1 if len(reads) > 1 else 0)
        )  # the second read finds a newer process

    monkeypatch.setattr(procfs, "stat", reused)
    stats = adoption.AdoptionStats()
    assert adoption.snapshot_or_none(os.getpid(), BootClock(), None, stats) is None
    assert stats.vanished == 1 and len(reads) == 2
