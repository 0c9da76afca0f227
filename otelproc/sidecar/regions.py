"""The span regions (otelproc/region.py) of the processes otelproc tracks: opened while each process
lives, read when it ends.

The kernel side reports a tracked process's memfd_create of a region (a 'region' event with
its fd); otelproc opens /proc/<pid>/fd/<fd> at once and keeps that open file, so that the
region is still there to read when the process is gone. Processes already running when
otelproc starts (adopted, or carried over from the last otelproc) are looked up in
/proc/<pid>/fd instead. A region is opened only when it is what it says: a memfd of that
name, of the region's size, owned by the process's own user; and read only when its
header names the process it was opened from. What a region cannot give is counted in
drops (region_*), and the process's own spans are all it can cost.
"""

from __future__ import annotations

import os
import resource
from typing import Callable

from otelproc import region
from otelproc.region import Region, RegionError
from otelproc.sidecar.tracker import ProcessKey
from otelproc.stats import Stats

LINK_NAME = f"/memfd:{region.REGION_NAME} (deleted)"
FD_HEADROOM = 256  # descriptors left for everything else otelproc opens


def raise_fd_limit() -> int:
    """The soft limit on open files up to the hard one: each region holds one. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class Regions:
    """Open regions by process, bounded by the limit on open files."""

    def __init__(self, stats: Stats, max_open: int | None = None) -> None:
        self.stats = stats
        self.max_open = max_open if max_open is not None else max(0, raise_fd_limit() - FD_HEADROOM)
        self._open: dict[ProcessKey, int] = {}
        self._gone: set[ProcessKey] = set()  # found gone at the last prune

    def __len__(self) -> int:
        return len(self._open)

    def open(self, key: ProcessKey, pid: int, uid: int, fd: int) -> bool:
        """Opens the region the process has at fd (as the kernel reported it). False when it is none."""
        if key in self._open:
            return True
        if len(self._open) >= self.max_open:
            self.stats.drops["region_fd_limit"] += 1
            return False
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(path) != LINK_NAME:
                return False  # another memfd of that name's prefix, or the fd was closed and reused
            opened = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.stats.drops["region_gone"] += 1  # the process, or its fd, went before otelproc got there
            return False
        try:
            st = os.fstat(opened)
        except OSError:
            os.close(opened)
            return False
        if st.st_uid != uid or st.st_size != region.SIZE:
            os.close(opened)
            self.stats.drops["region_invalid"] += 1
            return False
        self._open[key] = opened
        return True

    def find(self, key: ProcessKey, pid: int, uid: int) -> bool:
        """Looks for the region of a process that was running before otelproc saw it create one."""
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return False
        for name in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") == LINK_NAME:
                    return self.open(key, pid, uid, int(name))
            except (OSError, ValueError):
                continue
        return False

    def take(self, key: ProcessKey, pid: int, start_ticks: int, died: bool) -> Region | None:
        """The region of a process that has ended, read and closed; None if it had none or it is unreadable.
        pid is the process's own (its vpid): the header must name it, and its start. died: it was killed
        (or its server aborted it), so the ended spans it evicted from the region may never have gone out."""
        fd = self._open.pop(key, None)
        if fd is None:
            return None
        try:
            data = os.pread(fd, region.SIZE, 0)
        except OSError:
            self.stats.drops["region_invalid"] += 1
            return None
        finally:
            os.close(fd)
        try:
            found = region.read_region(data)
        except RegionError:
            self.stats.drops["region_invalid"] += 1
            return None
        if (found.pid, found.start_ticks) != (pid, start_ticks):
            self.stats.drops["region_invalid"] += 1  # written by another process (an inherited mapping)
            return None
        self.stats.drops["region_span_torn"] += found.torn
        self.stats.drops["region_span_malformed"] += found.malformed
        self.stats.drops["region_span_unrecorded"] += found.dropped
        if died:
            self.stats.drops["region_span_evicted"] += found.evicted
        return found

    def prune(self, alive: Callable[[int, int], bool]) -> None:
        """Closes the regions of processes gone without an end otelproc saw (their exit record lost,
        and the process no longer in the table for a sweep to end): alive(pid, start_ticks). A process
        found gone is closed at the next prune, when still open: its exit record may be on its way."""
        gone = {key for key in self._open if not alive(*key)}
        for key in gone & self._gone:
            os.close(self._open.pop(key))
        self._gone = gone

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()
