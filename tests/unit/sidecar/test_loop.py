"""The sidecar's event path under records no probe writes: random, truncated, corrupted.

Seeded and bounded in time (FUZZ_SECONDS, default 3 s): on_record never raises, counts what it could
not decode, and every span it makes still encodes as OTLP. The records are in the shipped object's
layout (its BTF, read through libbpf.so.1); no probe is loaded.
"""

from __future__ import annotations

import os
import random
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelproc import cli, config
from support.events import fuzzed_records


SECONDS = float(os.environ.get("FUZZ_SECONDS", "3"))


SEED = int(os.environ.get("FUZZ_SEED", "13"))


def test_the_event_path_survives_every_record():
    args = cli.build_parser().parse_args(["run", "--exporter", "console", "--state-file", "", "--adopt", "false"])
    from otelproc.sidecar.loop import build_sidecar

    memory = InMemorySpanExporter()
    sidecar = build_sidecar(config.resolve("run", args, environ={}), SimpleSpanProcessor(memory))
    rng = random.Random(SEED + 1)
    seen = 0
    deadline = time.monotonic() + SECONDS
    for raw in fuzzed_records(rng):
        if time.monotonic() > deadline:
            break
        sidecar.on_record(raw)  # never raises
        seen += 1
    sidecar.housekeeping()
    spans = memory.get_finished_spans()
    encode_spans(spans).SerializeToString()  # every span the fuzzed records made can be exported
    assert spans and sidecar.stats.failures["decode"] > 100 and sum(sidecar.stats.events.values()) > 100
    assert sum(sidecar.stats.failures.values()) == sidecar.stats.failures["decode"], sidecar.stats.failures
