"""process.owner as the process itself would say it: the user name its own /etc/passwd gives its uid.

A process in a container sees the container's /etc/passwd, not the host's (nor
otelproc's, which may sit in a container of its own). The kernel shows a
process's view of the filesystem at /proc/<pid>/root; its passwd file is read
there while the process runs, parsed once per distinct file (device, inode,
modification time), and the name kept with the tracked process.

A process with the uid of its tracked parent takes the parent's name without
a look (a fork keeps the root, and so does an exec: tracker.Tracker._owner).
Else a process gone before it could be looked at (it lived shorter than the
poll interval) takes otelproc's own /etc/passwd when it runs in otelproc's pid
namespace, or no name at all (process.user.id is always there). A uid the file
does not name is given as text, as `ps` shows it.
"""

from __future__ import annotations

import os
import pwd

from otelproc import procfs
from otelproc.model import text

MAX_FILES = 256  # distinct passwd files kept parsed (containers with their own images)


class Owners:
    def __init__(self) -> None:
        self._own_pidns = procfs.pidns(os.getpid())
        self._files: dict[tuple[int, int, int], dict[int, str]] = {}
        self._own: dict[int, str] = {}

    def name(self, pid: int, uid: int, pidns: int) -> str | None:
        """The user name of uid as process pid sees it."""
        path = f"/proc/{pid}/root/etc/passwd"
        try:
            st = os.stat(path)
        except OSError:
            if os.access(f"/proc/{pid}/root/", os.F_OK):  # (no exception to raise when gone: storms)
                return str(uid)  # it runs, and its view has no /etc/passwd: no names there
            return self._own_name(uid) if pidns == self._own_pidns else None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        names = self._files.get(key)
        if names is None:
            try:
                names = _parse(path)
            except OSError:
                return self._own_name(uid) if pidns == self._own_pidns else None
            if len(self._files) >= MAX_FILES:
                self._files.pop(next(iter(self._files)))
            self._files[key] = names
        return names.get(uid, str(uid))

    def _own_name(self, uid: int) -> str:
        if uid not in self._own:
            try:
                self._own[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._own[uid] = str(uid)  # a uid with no name: as `ps` shows it
        return self._own[uid]


def _parse(path: str) -> dict[int, str]:
    """name:password:uid:... lines; the first name given to a uid wins, as getpwuid's does."""
    names: dict[int, str] = {}
    with open(path, "rb") as f:
        for line in f.read(1 << 20).splitlines():
            fields = line.split(b":")
            if len(fields) >= 3 and fields[2].isdigit():
                names.setdefault(int(fields[2]), text(fields[0]))
    return names
