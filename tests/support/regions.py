"""The span regions of traced processes (otelproc/region.py), as the test (root) sees them through /proc."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from otelproc import region


def _region_fds(pid: int) -> list[Path]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith(f"/memfd:{region.REGION_NAME}"):
                found.append(fd)
        except OSError:
            continue
    return found


def holds_region(holder: int, owner: int) -> bool:
    """Whether process holder has the span region of process owner open (the same memfd)."""

    def inodes(pid: int) -> set[int]:
        return {os.stat(fd).st_ino for fd in _region_fds(pid)}

    return bool(inodes(owner) & inodes(holder))


def _held(pid: int, state: int) -> int:
    if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
        raise AssertionError(f"process {pid} has exited: it holds no region")
    total = 0
    for fd in _region_fds(pid):
        with open(fd, "rb") as memfd:
            found = region.read_region(memfd.read(region.SIZE))
        if found.pid == pid:  # its own, not one inherited from its parent
            total += sum(1 for span in found.spans if span.state == state)
    return total


def in_flight(pid: int) -> int:
    """Spans process pid has started and not ended. A server span ends after the response has gone out:
    a test that kills a worker after its request "finished" waits for this to be 0 first."""
    return _held(pid, region.STARTED)


def unexported(pid: int) -> int:
    """Spans process pid has ended and its exporter has not yet returned from sending. A span the
    Collector already has but its process has not yet let go of is sent again should the process be
    killed right then (docs/correlation.md): a test that counts spans kills once this is 0."""
    return _held(pid, region.ENDED)
