"""The app side's SIGTERM handler, in real processes: a process stopped by SIGTERM sends its last spans,
still dies by SIGTERM, waits a bounded time for an exporter that hangs, and leaves others' handlers alone."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from support import PYTHON, REPO

# A process with the SDK, a batch processor that would hold its spans for a minute, and the app side.
SETUP = """
import signal, sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult
import otelproc.app

class Hanging(SpanExporter):
    def export(self, spans):
        time.sleep(60)
        return SpanExportResult.SUCCESS

provider = TracerProvider()
exporter = Hanging() if "hang" in sys.argv else ConsoleSpanExporter(formatter=lambda s: s.name + "\\n")
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
"""


def start(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [PYTHON, "-c", SETUP + code, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_ready(process: subprocess.Popen) -> None:
    assert process.stdout.readline() == "ready\n", process.stderr.read()


SERVE = """
otelproc.app.enable(provider)
provider.get_tracer("t").start_span("last request").end()
print("ready", flush=True)
time.sleep(60)
"""


def test_a_process_stopped_by_sigterm_sends_its_last_spans_and_dies_by_sigterm():
    process = start(SERVE)
    wait_ready(process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, err
    assert out == "last request\n"


def test_an_exporter_that_hangs_delays_the_death_by_at_most_two_seconds():
    process = start(SERVE, "hang")
    wait_ready(process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert time.monotonic() - sent < 4


def test_a_handler_that_is_not_the_default_stays():
    """The user's own, SIG_IGN: what the process chose for SIGTERM is not the app side's to change."""
    code = """
def own(signum, frame):
    print("own handler", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, own if sys.argv[1] == "own" else signal.SIG_IGN)
otelproc.app.enable(provider)
print("ready", flush=True)
time.sleep(5)
"""
    own = start(code, "own")
    wait_ready(own)
    own.send_signal(signal.SIGTERM)
    out, err = own.communicate(timeout=30)
    assert (own.returncode, out) == (0, "own handler\n"), err
    ignoring = start(code, "ignore")
    wait_ready(ignoring)
    ignoring.send_signal(signal.SIGTERM)
    ignoring.communicate(timeout=30)
    assert ignoring.returncode == 0, "SIGTERM stayed ignored: it slept its 5 s and ended"


def test_disable_puts_the_default_back():
    code = """
otelproc.app.enable(provider)
otelproc.app.disable()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""
    out, err = start(code).communicate(timeout=30)
    assert out == "True\n", err
