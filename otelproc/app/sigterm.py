"""A process stopped by SIGTERM sends the spans it still holds before it dies by the signal.

The SDK flushes its batch processor at exit, from an atexit handler, which a process
killed by a signal never runs: its last batch (up to OTEL_BSP_SCHEDULE_DELAY, 5 s by
default) is lost. That is every process left with SIGTERM's default action, and every
uvicorn server: it stops gracefully on SIGTERM, puts back the handler it found at its
start and raises SIGTERM again, to die by it.

So where SIGTERM's handler is the default, the app side puts its own in its place:
it flushes the provider (at most deaths.FLUSH_SECONDS), puts the default back and
raises SIGTERM again, so the process still dies by SIGTERM (same exit status; the
sidecar still reads "stopped by SIGTERM from <the sender>"). uvicorn finds this handler
at its start, and its re-raise after the graceful shutdown reaches it.

A handler that is not the default (gunicorn's in its workers, Celery's, the user's own,
SIG_IGN) is never replaced. The handler is set in the main thread only (Python allows
no other), in each process the app side loads in: a spawned child (uvicorn --workers,
--reload) loads it again; a forked child inherits it.

uvicorn does not always find it: gunicorn's UvicornWorker sets SIGTERM back to the
default in each worker before uvicorn starts, and an app that calls enable() while
uvicorn imports it is too late (uvicorn's own handler is in place). So
signal.raise_signal is wrapped too: a process that raises SIGTERM on itself while its
action is the default flushes first. Nothing else changes how it dies.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from opentelemetry.sdk.trace import TracerProvider

from otelproc.app.deaths import flush_within

_provider: TracerProvider | None = None
_original_raise_signal = signal.raise_signal


def _raise_signal(signalnum: int, /) -> None:
    """signal.raise_signal, flushing first when SIGTERM is about to end the process by its default action."""
    provider = _provider
    if provider is not None and signalnum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            flush_within(provider)
        except Exception:  # noqa: BLE001 -- a flush that fails must not change how the process dies
            pass
    _original_raise_signal(signalnum)


def _flush_then_die(signum: int, frame: FrameType | None) -> None:
    # The default first: a second SIGTERM while the flush waits ends the process at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _raise_signal(signal.SIGTERM)


def install(provider: TracerProvider) -> None:
    """Flushes `provider` on SIGTERM, if SIGTERM has its default action and this is the main thread,
    and before a SIGTERM the process raises on itself with that action."""
    global _provider
    _provider = provider
    signal.raise_signal = _raise_signal
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _flush_then_die)


def uninstall() -> None:
    """Puts back signal.raise_signal, and the default if the handler is still ours."""
    global _provider
    _provider = None
    signal.raise_signal = _original_raise_signal
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is _flush_then_die:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
