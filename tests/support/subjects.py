"""The processes the kernel tests watch: the name they run under, and what a test reads of them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from support import PYTHON

# Processes the run tests spawn run a copy of PYTHON with a name of their own (test_python),
# so that a sidecar matching only that name sees them and not the test runner. The name is
# this session's own (15 bytes, the kernel's limit): another test session on the same host
# runs its subjects under another, and a sidecar here never counts them.
TEST_COMM = f"python-otp{os.getpid() % 100000:05d}"
MATCH_TEST = ("--match", TEST_COMM, "--adopt", "false")
# A name no other test's subjects (nor a helper of theirs) run under, for the tests that fill a tiny ring
# buffer or map: it must hold only theirs. Named like python: a span is named after the script it runs.
LONE_COMM = "python-lone"
WAITING = "import sys; sys.stdin.read(); sys.exit(int(sys.argv[1]))"


def proc_start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat; the command name (field 2) may hold spaces."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def python_named(directory: Path, name: str) -> str:
    """PYTHON as an executable file named `name`: the kernel side matches the name of the file an exec
    loads (symlinks resolved), so a symlink would not do. A copy in a venv (--copies) made in
    `directory`, so that it finds its standard library and sees the installed packages."""
    subprocess.run(
        [PYTHON, "-m", "venv", "--copies", "--system-site-packages", "--without-pip", str(directory)], check=True
    )
    python = directory / "bin" / name
    (directory / "bin" / os.path.basename(PYTHON)).rename(python)
    return str(python)


def spawn(test_python: str, code: str, *args: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen([test_python, "-c", code, *args], **kwargs)


def waiting(test_python: str, exit_status: int) -> subprocess.Popen:
    """A subject that runs until its stdin closes, then exits with exit_status."""
    return spawn(test_python, WAITING, str(exit_status), stdin=subprocess.PIPE)


def ended_at(child: subprocess.Popen) -> int:
    """Lets a waiting subject exit; returns (about) when it did, in Unix ns."""
    child.communicate(b"")
    return time.time_ns()


def run_all(test_python: str, n: int, tag: str) -> list[int]:
    """n subjects that do nothing (tag: their one argument), each run to its end; their pids."""
    children = [spawn(test_python, "pass", tag) for _ in range(n)]
    for child in children:
        assert child.wait(30) == 0
    return [c.pid for c in children]


def until_finished(python: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A subject that runs until its stdin is closed (finish)."""
    return subprocess.Popen(
        [python, "-c", "import sys; sys.stdin.read()", *args],
        stdin=subprocess.PIPE,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
    )


def finish(*children: subprocess.Popen) -> None:
    """Closes each subject's stdin, then waits for them all."""
    for child in children:
        if child.poll() is None:
            child.stdin.close()
    for child in children:
        child.wait(30)


MEMORY_V1 = Path("/sys/fs/cgroup/memory")  # these machines mount cgroup v1's memory controller here
# A python that joins the memory cgroup argv[1] names, says so, then eats memory until the OOM killer ends it.
EAT_MEMORY = """
import os, sys
open(os.path.join(sys.argv[1], 'cgroup.procs'), 'w').write(str(os.getpid()))
print('inside', flush=True)
blocks = []
while True:
    block = bytearray(16 << 20)
    block[::4096] = b'x' * len(range(0, 16 << 20, 4096))
    blocks.append(block)
"""


def remove_cgroup(path: Path) -> None:
    """rmdir once the kernel has let go of the dead member (its pages are uncharged lazily)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            path.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
