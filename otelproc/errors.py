"""The failures a user can act on, and the exit code of each.

`otelproc` prints one of these as one line on stderr (`otelproc: error: ...`)
and exits with its code, never with a traceback: 2 when the user can fix it
(flags, settings, privileges, a pin directory in use), 1 when the kernel
refused, 3 when the installed package itself is broken (a BPF object that does
not match this version of otelproc).
"""

from __future__ import annotations

EXIT_KERNEL = 1
EXIT_USAGE = 2
EXIT_BROKEN_INSTALL = 3


class OtelprocError(Exception):
    """A failure with a one-line message that says what to do; str() is that line alone."""

    exit_code = EXIT_KERNEL


class ConfigError(OtelprocError, ValueError):
    """A bad flag or setting; the message names it."""

    exit_code = EXIT_USAGE


class BrokenInstallError(OtelprocError):
    """The BPF object shipped with otelproc does not fit the Python code that reads it."""

    exit_code = EXIT_BROKEN_INSTALL


def describe(exc: BaseException) -> str:
    """An exception as a person reads it in one line: an OSError without Python's "[Errno N]"
    (its reason, then the files it names), anything else as its type and message."""
    if isinstance(exc, OSError) and exc.strerror and not isinstance(exc, OtelprocError):
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{exc.strerror} ({files})" if files else exc.strerror
    if isinstance(exc, OtelprocError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
