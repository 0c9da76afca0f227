"""The app side: runs inside a traced service. Its request spans link to its process's lifetime span
(links.py), when it dies of an exception its process trace says which (deaths.py), and when it is
stopped by SIGTERM it sends its last spans before it dies by the signal (sigterm.py).

It imports nothing of the kernel side or the sidecar (tests/unit/app/test_boundaries.py).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otelproc.app import deaths, links, sigterm
from otelproc.app.links import ProcessResourceDetector, process_link


def enable(provider: TracerProvider | None = None) -> None:
    """The one line: links root spans to the process span, passes context to subprocesses, and reports
    the exception a process (or a thread of it) dies of, and flushes on SIGTERM."""
    given = provider or trace.get_tracer_provider()
    if not isinstance(given, TracerProvider):
        raise RuntimeError("otelproc.app.enable() needs the OpenTelemetry SDK's TracerProvider")
    provider = given
    links.install(provider)
    deaths.install(provider)
    sigterm.install(provider)


def disable() -> None:
    """Stops passing context to subprocesses and puts back the hooks deaths.py and sigterm.py set (span
    processors cannot be removed from a provider)."""
    links.uninstall()
    deaths.uninstall()
    sigterm.uninstall()


__all__ = ["ProcessResourceDetector", "disable", "enable", "process_link"]
