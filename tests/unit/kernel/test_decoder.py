"""The decoder: records as the shipped object lays them out (its BTF, read through libbpf.so.1) to ProcessEvents.

The fuzz loop is seeded and bounded in time (FUZZ_SECONDS, default 3 s): the decoder returns an event or
raises MalformedRecord, nothing else.
"""

from __future__ import annotations

import os
import random
import time

from otelproc.clock import BootClock
from otelproc.kernel.decoder import MalformedRecord, cpu_split, decode
from otelproc.model import ProcessEvent
from unit.support import fuzzed_records


SECONDS = float(os.environ.get("FUZZ_SECONDS", "3"))


SEED = int(os.environ.get("FUZZ_SEED", "13"))


def test_cpu_time_split_like_getrusage():
    assert cpu_split(1000, 3, 1) == (750, 250)
    assert cpu_split(1000, 0, 0) == (1000, 0)  # no tick landed: all user, as the kernel does
    assert cpu_split(1000, 0, 5) == (0, 1000)


def test_decoder_returns_an_event_or_raises_malformed_record():
    rng = random.Random(SEED)
    clock = BootClock()
    decoded = malformed = 0
    deadline = time.monotonic() + SECONDS
    for raw in fuzzed_records(rng):
        if time.monotonic() > deadline:
            break
        try:
            event = decode(raw, clock)
        except MalformedRecord:
            malformed += 1
            continue
        assert isinstance(event, ProcessEvent)
        for text in (event.comm, event.cgroup, event.exe or "", *(event.argv or ()), *dict(event.otel_env).values()):
            text.encode("utf-8")  # valid Unicode: no surrogates reach the exporter
        decoded += 1
    assert decoded > 100 and malformed > 100, (decoded, malformed)

