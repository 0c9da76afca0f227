"""cgroup v2 ids (as the kernel reports them) to paths, for process.linux.cgroup.

A cgroup v2 id is the inode number of its directory in cgroupfs, so a walk of
the cgroup2 mount maps ids to paths. The map is cached and walked again, at
most every few seconds, when an id is missing (a container started since).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RESCAN_NS = 5_000_000_000
ROOT_CGROUP_ID = 1


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where cgroup v2 is mounted: /sys/fs/cgroup on most hosts, /sys/fs/cgroup/unified on hybrid ones."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[0] == "cgroup2":
            return fields[0].split()[4]
    return None


class CgroupPaths:
    def __init__(self, mount: str | None = None) -> None:
        self.mount = mount if mount is not None else cgroup2_mount()
        self._paths: dict[int, str] = {}
        self._next_scan = 0

    def _scan(self) -> None:
        self._paths.clear()
        if not self.mount:
            return
        for root, dirs, _files in os.walk(self.mount):
            try:
                inode = os.stat(root).st_ino
            except OSError:
                continue
            relative = os.path.relpath(root, self.mount)
            self._paths[inode] = "/" if relative == "." else "/" + relative
            dirs.sort()

    def path(self, cgroup_id: int) -> str | None:
        """ "0::/system.slice/app.service" in /proc/<pid>/cgroup form, or None when unknown or the root."""
        if cgroup_id in (0, ROOT_CGROUP_ID) or not self.mount:
            return None
        path = self._paths.get(cgroup_id)
        if path is None and time.monotonic_ns() >= self._next_scan:
            self._scan()
            self._next_scan = time.monotonic_ns() + RESCAN_NS
            path = self._paths.get(cgroup_id)
        return f"0::{path}" if path else None
