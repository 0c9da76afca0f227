"""The span region's format (otelproc/region.py): what the app side writes is read back as written, and
whatever else a process leaves there is read as data, never trusted and never a crash."""

from __future__ import annotations

import random
import struct

import pytest

from otelproc import region
from otelproc.region import HEADER, HEADER_SIZE, SLOT, SLOT_SIZE, SLOTS, RegionError


def blank(pid: int = 42, start_ticks: int = 7, resource: bytes = b"service.name\0sshop") -> bytearray:
    data = bytearray(region.SIZE)
    HEADER.pack_into(data, 0, region.MAGIC, region.VERSION, SLOT_SIZE, SLOTS, pid, start_ticks, 3, 5, len(resource))
    data[HEADER.size : HEADER.size + len(resource)] = resource
    return data


def put(
    data: bytearray,
    index: int,
    seq: int = 2,
    state: int = region.STARTED,
    texts=("GET /", "asgi", "1.0", "", ""),
    attributes=None,
    trace_id: int = 0xABC,
    span_id: int = 0xDEF,
    parent: int = 0,
) -> None:
    encoded, count, cut = region.encode_texts(texts, attributes or {}, region.TEXT_MAX)
    flags = region.FLAG_SAMPLED | (region.FLAG_PARENT if parent else 0) | (region.FLAG_CUT if cut else 0)
    at = HEADER_SIZE + index * SLOT_SIZE
    SLOT.pack_into(
        data,
        at,
        seq,
        state,
        1,
        flags,
        0,
        len(encoded),
        count,
        0,
        trace_id.to_bytes(16, "big"),
        span_id.to_bytes(8, "big"),
        parent.to_bytes(8, "big"),
        100,
    )
    data[at + SLOT.size : at + SLOT.size + len(encoded)] = encoded


def test_a_slot_reads_back_as_written():
    data = blank()
    attributes = {"http.route": "/items/{id}", "n": 3, "ratio": 0.5, "ok": True, "tags": ["a", "b"]}
    put(data, 5, attributes=attributes, parent=0x99)
    read = region.read_region(bytes(data))
    assert (read.pid, read.start_ticks, read.dropped, read.evicted) == (42, 7, 3, 5)
    assert read.resource == {"service.name": "shop"}
    (span,) = read.spans
    assert (span.trace_id, span.span_id, span.parent_span_id, span.kind, span.start_ns) == (0xABC, 0xDEF, 0x99, 1, 100)
    assert (span.name, span.scope, span.scope_version) == ("GET /", "asgi", "1.0")
    assert span.attributes == attributes and not span.cut


def test_attributes_past_a_slot_are_cut_and_said_to_be():
    many = {f"attribute.{i}": "x" * 40 for i in range(60)}
    data = blank()
    put(data, 0, attributes=many)
    (span,) = region.read_region(bytes(data)).spans
    assert span.cut and 0 < len(span.attributes) < 60
    assert all(many[k] == v for k, v in span.attributes.items())


def test_a_nul_in_a_text_does_not_shift_the_rest():
    data = blank()
    put(data, 0, texts=("a\0b", "s", "", "", ""), attributes={"k\0": "v\0w", "after": "x"})
    (span,) = region.read_region(bytes(data)).spans
    assert span.name == "a\ufffdb" and span.attributes == {"k\ufffd": "v\ufffdw", "after": "x"}


@pytest.mark.parametrize(
    "texts, attributes",
    [
        (("GET /items/{id}", "asgi", "1.0", "", ""), {"http.route": "/items/{id}", "n": 3, "ok": False}),
        (("n" * 300, "s", "", "", ""), {"k": "v"}),  # a name past NAME_MAX
        (("a", "s", "", "", ""), {"k\0": "v"}),  # a NUL in a key
        (("a", "s", "", "", "x\0y"), {}),  # in a text
    ],
)
def test_the_quick_encoding_is_the_careful_one(texts, attributes):
    """encode_texts' one-join path (the request path's) writes what the per-text path writes."""
    quick = region.encode_texts(texts, attributes, region.TEXT_MAX)
    careful_texts = [t[: region.NAME_MAX].replace("\0", "\ufffd") for t in texts]
    careful = "\0".join(careful_texts + region.encode_attributes(attributes.items())).encode()
    assert quick == (careful, len(attributes), False)


def test_a_slot_caught_half_written_is_skipped_and_counted():
    data = blank()
    put(data, 0, seq=3)
    put(data, 1, seq=4, span_id=0x55)
    read = region.read_region(bytes(data))
    assert read.torn == 1 and [s.span_id for s in read.spans] == [0x55]


@pytest.mark.parametrize("damage", ["magic", "version", "slot size", "slots", "resource", "short"])
def test_a_header_that_is_not_a_regions_is_refused_whole(damage):
    data = blank()
    if damage == "magic":
        data[0:8] = b"NOTSPANS"
    elif damage == "version":
        struct.pack_into("<I", data, 8, 2)
    elif damage == "slot size":
        struct.pack_into("<I", data, 12, 4096)
    elif damage == "slots":
        struct.pack_into("<I", data, 16, SLOTS + 1)
    elif damage == "resource":
        struct.pack_into("<I", data, HEADER.size - 4, HEADER_SIZE)
    else:
        data = data[:100]
    with pytest.raises(RegionError):
        region.read_region(bytes(data))


def test_garbage_slots_cost_only_themselves():
    rng = random.Random(27)
    data = blank()
    for index in range(SLOTS):
        at = HEADER_SIZE + index * SLOT_SIZE
        data[at : at + SLOT_SIZE] = rng.randbytes(SLOT_SIZE)
        data[at : at + 4] = (rng.randrange(2**31) * 2).to_bytes(4, "little")  # whole, as far as the seq says
    put(data, 9, span_id=0x77)
    read = region.read_region(bytes(data))  # never raises
    assert 0x77 in [s.span_id for s in read.spans]
    assert read.malformed + len(read.spans) + read.torn <= SLOTS
    for span in read.spans:
        assert len(span.attributes) <= region.MAX_ATTRIBUTES and len(span.name) <= region.NAME_MAX


def test_random_bytes_are_read_or_refused_never_a_crash():
    rng = random.Random(28)
    for _ in range(200):
        data = bytearray(rng.randbytes(rng.choice([0, 50, HEADER_SIZE, region.SIZE])))
        if data and rng.random() < 0.5:
            data[0:8] = region.MAGIC
        try:
            region.read_region(bytes(data))
        except RegionError:
            pass
