"""The pinned probe in bpffs: where it lives, who owns it, and how it is removed for good.

Links and maps pinned in bpffs outlive the process that loaded them, so the
probe keeps recording into its ring buffer while otelproc is down. A pin
directory (/sys/fs/bpf/otelproc by default) holds one subdirectory per probe,
named after its fingerprint: the BPF object's bytes and every setting fixed
at load time. A successor whose fingerprint is the same reuses the probe; one
whose fingerprint differs (an upgrade, a new setting) takes it over. Two
otelprocs never own the same pins: the first holds an flock on the pin
directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from pathlib import Path

from otelproc.errors import EXIT_USAGE, OtelprocError
from otelproc.kernel import libbpf

BPFFS_ROOT = "/sys/fs/bpf"
LINK_PREFIX = "link_"
MAP_PREFIX = "map_"


class PinError(OtelprocError):
    """Pins that cannot be used; the message is one line that says what to do."""

    exit_code = EXIT_USAGE


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount this process sees."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((fields[1].replace("\\040", " "), fields[2]))
    return out


def on_bpffs(path: Path) -> bool:
    """Whether path would be on a bpffs mount: its nearest mount point's type is bpf."""
    best, kind = "", ""
    target = os.path.abspath(path)
    for point, fstype in _mounts():
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fstype
    return kind == "bpf"


def ensure_bpffs(pin_dir: Path) -> str | None:
    """Makes pin_dir usable (mounting bpffs at /sys/fs/bpf if need be); returns why not, or None."""
    if not on_bpffs(pin_dir):
        if not str(pin_dir).startswith(BPFFS_ROOT + "/"):
            return f"{pin_dir} is not on a bpffs mount"
        try:
            libbpf.mount_bpffs(BPFFS_ROOT)
        except OSError as exc:
            return f"bpffs is not mounted at {BPFFS_ROOT} and mounting it failed ({exc.strerror})"
    try:
        pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create {pin_dir} ({exc.strerror})"
    return None


def fingerprint(object_bytes: bytes, load_time_settings: dict[str, object]) -> str:
    """What a pinned probe is: its object and the settings fixed at its load."""
    digest = hashlib.sha256(object_bytes)
    digest.update(repr(sorted(load_time_settings.items())).encode())
    return digest.hexdigest()[:16]


def probes(pin_dir: Path) -> list[Path]:
    """The probe directories under pin_dir (normally none or one)."""
    try:
        return sorted(p for p in pin_dir.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def links(probe_dir: Path) -> list[Path]:
    return sorted(p for p in probe_dir.iterdir() if p.name.startswith(LINK_PREFIX))


def prog_ids(probe_dir: Path) -> list[int]:
    """The programs a pinned probe's links attach."""
    ids = []
    for path in links(probe_dir):
        fd = libbpf.obj_get(str(path))
        try:
            ids.append(libbpf.link_prog_id(fd))
        finally:
            os.close(fd)
    return ids


def unpin_links(probe_dir: Path) -> None:
    """Detaches the probe's programs: a link whose last pin and fd are gone is destroyed."""
    for path in links(probe_dir):
        path.unlink(missing_ok=True)


def remove(probe_dir: Path) -> None:
    """Unpins everything of one probe; with no fd left open on them, the kernel frees it all."""
    unpin_links(probe_dir)
    for path in probe_dir.iterdir():
        path.unlink(missing_ok=True)
    probe_dir.rmdir()


def programs(pin_dir: Path) -> list[int]:
    """The programs of every probe pinned under pin_dir, as far as their pins can be read."""
    ids = []
    for probe_dir in probes(pin_dir):
        try:
            ids += prog_ids(probe_dir)
        except OSError:
            continue
    return ids


def wait_unloaded(prog_ids: list[int], timeout: float = 5.0) -> list[int]:
    """Those of prog_ids still loaded after up to timeout seconds. The kernel frees a program whose last
    link went after an RCU grace period, so an unpinned probe's programs linger a moment; one another
    process holds open stays."""
    deadline = time.monotonic() + timeout
    while True:
        left = [i for i in prog_ids if libbpf.prog_exists(i)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.02)


def remove_all(pin_dir: Path) -> int:
    """Removes every probe pinned under pin_dir, and pin_dir itself; returns how many probes."""
    found = probes(pin_dir)
    for probe_dir in found:
        remove(probe_dir)
    try:
        pin_dir.rmdir()
    except FileNotFoundError:
        pass
    return len(found)


def _lock_holder(fd: int) -> str:
    """The pid /proc/locks names for the flock on fd's inode ("?" when it is not to be seen)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
            return fields[4]
    return "?"


def holder(pin_dir: Path) -> str | None:
    """The pid of the otelproc that holds pin_dir's lock ("?" when not to be seen); None when none does."""
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released with the fd
    except BlockingIOError:
        return _lock_holder(fd)
    finally:
        os.close(fd)
    return None


class PinLock:
    """An exclusive flock on the pin directory itself, held for as long as otelproc runs.

    bpffs holds no regular files, but its directories can be opened and locked;
    every otelproc that shares the pins sees the lock, whatever its state file
    or container."""

    def __init__(self, pin_dir: Path) -> None:
        try:
            self._fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise PinError(f"cannot open {pin_dir} ({exc.strerror})") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(self._fd)
            os.close(self._fd)
            raise PinError(
                f"another otelproc (pid {holder}) owns the pinned probe in {pin_dir}; stop it first"
            ) from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
