"""The app side: runs inside a traced service. Its request spans link to its process's lifetime span
(links.py), when it dies of an exception its process trace says which (deaths.py), when it is
stopped by SIGTERM it sends its last spans before it dies by the signal (sigterm.py), and what it
has not exported yet waits in its span region, for otelproc should a kill take it (inflight.py).

It imports nothing of the kernel side or the sidecar (tests/unit/app/test_boundaries.py).
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from otelproc.app import deaths, inflight, links, sigterm
from otelproc.app.links import ProcessResourceDetector, process_link


def enable(provider: TracerProvider | None = None) -> None:
    """The one line: links root spans to the process span, passes context to subprocesses, reports
    the exception a process (or a thread of it) dies of, flushes on SIGTERM, and keeps what is not
    exported yet where otelproc finds it after a kill. Call it once the provider has its span
    processors: their exporters are what let the kept spans go."""
    given = provider or trace.get_tracer_provider()
    if not isinstance(given, TracerProvider):
        raise RuntimeError("otelproc.app.enable() needs the OpenTelemetry SDK's TracerProvider")
    provider = given
    links.install(provider)
    deaths.install(provider)
    sigterm.install(provider)
    inflight.install(provider)


def disable() -> None:
    """Stops passing context to subprocesses and puts back the hooks deaths.py and sigterm.py set (span
    processors cannot be removed from a provider)."""
    links.uninstall()
    deaths.uninstall()
    sigterm.uninstall()
    inflight.uninstall()


__all__ = ["ProcessResourceDetector", "disable", "enable", "process_link"]
