"""Which processes otelproc tracks: the kernel side's rule, for the code that must agree with it.

The kernel side decides at exec: a process is tracked when the file the exec
loads has a name on the match list (what /proc/<pid>/exe names: for a #! script
its interpreter, symlinks resolved), or when it descends from a tracked
process. Adoption (processes found in /proc at start) and the app-side helper
("is my process tracked?") ask the same question here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from otelproc import procfs
from otelproc.model import EXE_NAME_LEN

# The kernel reads EXE_NAME_LEN - 1 bytes of a name: a longer name is cut, and a rule that long could not tell.
EXE_NAME_MAX = EXE_NAME_LEN - 2


@dataclass(frozen=True)
class MatchRule:
    """An executable file name to track: exactly, or every name that starts with it."""

    name: str
    prefix: bool = False

    def __str__(self) -> str:
        return self.name + ("*" if self.prefix else "")

    def matches(self, exe_name: str) -> bool:
        """The userspace twin of the kernel's LPM-trie lookup."""
        return exe_name.startswith(self.name) if self.prefix else exe_name == self.name


# Every CPython build's file is named python... (python3.13, python3.13t, python3.13-dbg, python2.7),
# PyPy's pypy... (pypy3, pypy3.10), GraalPy's graalpy.
PYTHON_RULES = (MatchRule("python", True), MatchRule("pypy", True), MatchRule("graalpy", True))
PYTHON_INTERPRETERS = ",".join(map(str, PYTHON_RULES))


def exe_name(pid: int) -> str | None:
    """The name of the file the process's last exec loaded; None for a kernel thread, a zombie or a
    process that is gone (/proc/<pid>/exe cannot be read)."""
    path = procfs.exe(pid)
    return os.path.basename(path) if path else None


def any_match(match: tuple[MatchRule, ...], name: str | None) -> bool:
    return name is not None and any(rule.matches(name) for rule in match)


def starts_tracked(pid: int, match: tuple[MatchRule, ...], trace_all: bool = False) -> bool:
    """Whether the kernel side starts tracking this process at its exec (its descendants follow)."""
    return trace_all or any_match(match, exe_name(pid))


def is_python(exe_name: str | None) -> bool:
    """Whether a file of this name is a Python interpreter (its argv names the script or module it runs)."""
    return any_match(PYTHON_RULES, exe_name)
