"""The zero-code switch: `opentelemetry-instrument` loads this through its entry point.

It does something only when OTEL_EXPERIMENTAL_RESOURCE_DETECTORS names
"otelproc", the same variable that adds otelproc's resource detector: one
setting turns on the resource attribute, the span links, the subprocess
context, the report of an exception the process dies of and the flush on
SIGTERM together.
"""

from __future__ import annotations

from typing import Any, Collection

# mypy 2.4 reads this module and still finds no BaseInstrumentor in it; Python does (the entry point's tests).
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

import otelproc.app
from otelproc.app import links


class OtelprocInstrumentor(BaseInstrumentor):
    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        if links.opted_in():
            otelproc.app.enable(kwargs.get("tracer_provider"))

    def _uninstrument(self, **kwargs: Any) -> None:
        otelproc.app.disable()
