"""The decoder and the event path under records no probe writes: random, truncated, corrupted.

A seeded random loop, bounded in time (FUZZ_SECONDS, default 3 s): the decoder returns an event or
raises MalformedRecord, nothing else; the sidecar's on_record never raises, counts what it could
not decode, and every span it makes still encodes as OTLP.
"""

from __future__ import annotations

import os
import random
import time

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelproc import cli, config
from otelproc.clock import BootClock
from otelproc.kernel.decoder import MalformedRecord, decode, default_layout
from otelproc.model import ProcessEvent
from otelproc.kernel.record import KERNEL_KINDS

SECONDS = float(os.environ.get("FUZZ_SECONDS", "3"))
SEED = int(os.environ.get("FUZZ_SEED", "13"))


def records(rng: random.Random):
    """Well-formed records with random fields, then cut, flipped, or replaced by noise."""
    layout = default_layout()
    kinds = list(KERNEL_KINDS) + [0, 4, 0xFFFFFFFF]
    while True:
        data = rng.randbytes(rng.randrange(0, 700))
        lens = [rng.randrange(0, 300) for _ in range(3)]
        raw = layout.pack(
            data,
            kind=rng.choice(kinds), flags=rng.getrandbits(32), pid=rng.getrandbits(32), ppid=rng.getrandbits(32),
            tid=rng.getrandbits(32), vpid=rng.getrandbits(32), pidns=rng.getrandbits(32), uid=rng.getrandbits(32),
            gid=rng.getrandbits(32), exit_code=rng.getrandbits(32), time_ns=rng.getrandbits(63),
            start_time_ns=rng.getrandbits(63), cgroup_id=rng.getrandbits(64), exe_len=lens[0], argv_len=lens[1],
            env_len=lens[2], comm=rng.randbytes(16), cgroup=rng.randbytes(rng.randrange(0, 128)),
        )
        yield raw
        yield raw[: rng.randrange(0, len(raw) + 1)]
        flipped = bytearray(raw)
        for _ in range(rng.randrange(1, 8)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        yield bytes(flipped)
        yield rng.randbytes(rng.randrange(0, layout.header.size * 2))


def test_decoder_returns_an_event_or_raises_malformed_record():
    rng = random.Random(SEED)
    clock = BootClock()
    decoded = malformed = 0
    deadline = time.monotonic() + SECONDS
    for raw in records(rng):
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


def test_the_event_path_survives_every_record():
    args = cli.build_parser().parse_args(["run", "--exporter", "console", "--state-file", "", "--adopt", "false"])
    from otelproc.sidecar.loop import Sidecar

    sidecar = Sidecar(config.resolve("run", args, environ={}))
    sidecar.processor.shutdown()
    memory = InMemorySpanExporter()
    sidecar.processor = SimpleSpanProcessor(memory)
    rng = random.Random(SEED + 1)
    seen = 0
    deadline = time.monotonic() + SECONDS
    for raw in records(rng):
        if time.monotonic() > deadline:
            break
        sidecar.on_record(raw)  # never raises
        seen += 1
    sidecar.housekeeping()
    spans = memory.get_finished_spans()
    encode_spans(spans).SerializeToString()  # every span the fuzzed records made can be exported
    assert spans and sidecar.stats.failures["decode"] > 100 and sum(sidecar.stats.events.values()) > 100
    assert sum(sidecar.stats.failures.values()) == sidecar.stats.failures["decode"], sidecar.stats.failures
