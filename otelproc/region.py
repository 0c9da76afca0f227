"""The span region: where a traced process keeps the spans it has not exported yet, for otelproc to
export should the process die first.

The app side (app/inflight.py) creates it at start, and again in each forked child: a
memfd named REGION_NAME, mapped shared, written as spans start and end. It announces
the region by naming a short-lived thread ANNOUNCE_PREFIX + its fd, which the kernel
side sees (the task_rename tracepoint: nothing an unprivileged process does is cheaper
to trace); the sidecar opens it through /proc/<pid>/fd at once, so it can still read it
when the process is gone, however it died: a SIGKILL or the OOM killer gives the process
no chance to say anything, and the OOM reaper leaves shared memory alone. Only the
process's own user and otelproc (CAP_SYS_PTRACE) can open it.

Layout (little-endian): a header page, then SLOTS slots of SLOT_SIZE bytes.

  header  magic, version, slot size and count, the owner's pid (as it sees itself) and
          start time in clock ticks (which the sidecar checks against the process it
          opened it from), spans not recorded for want of a slot, ended spans whose slot
          a newer span took before their export, and the resource the process exports under.
  slot    a sequence number (odd while the slot is being written: what a kill cuts in
          half is skipped), the state (free, started, ended, aborted), the span's ids, kind, flags,
          start and end, status, then its texts: name, instrumentation scope and version,
          status description, trace state, and its attributes.

Everything here is bounded: what does not fit a slot is cut, and read_region takes
whatever the process wrote, however malformed, as data: it never raises, and what it
cannot read is counted, not trusted.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

REGION_NAME = "otelproc-spans"  # memfd_create's name; /proc/<pid>/fd shows "/memfd:otelproc-spans (deleted)"
ANNOUNCE_PREFIX = "otelproc-r"  # bpf/otelproc.h's REGION_PREFIX
MAGIC = b"OTPSPANS"
VERSION = 1
HEADER_SIZE = 4096
SLOT_SIZE = 1024
SLOTS = 1024  # the batch span processor's default batch (512) waiting, and as many more in flight
SIZE = HEADER_SIZE + SLOTS * SLOT_SIZE

# A slot's state. ABORTED: a span in flight when a signal's handler exited the process (a server's
# abort of its worker), exported by the process itself; kept so that the process span can link to it.
FREE, STARTED, ENDED, ABORTED = 0, 1, 2, 3
# FLAG_LINKED: the span links to its process's process span, as the first of its trace in the process
# (app/links.py): one without a parent, with a remote one, or with one its forked parent had open.
FLAG_SAMPLED, FLAG_PARENT, FLAG_REMOTE_PARENT, FLAG_CUT, FLAG_LINKED = 1, 2, 4, 8, 16
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

# magic, version, slot_size, slots, pid, start_ticks, unrecorded (dropped), evicted, resource_len
HEADER = struct.Struct("<8sIIIIQIII")
# seq, state, kind, flags, status, text_len, attr_count, end, ids, start: what an end changes comes first
SLOT = struct.Struct("<IBBBBHHQ16s8s8sQ")
TEXT_MAX = SLOT_SIZE - SLOT.size
RESOURCE_MAX = HEADER_SIZE - HEADER.size
NAME_MAX = 256  # characters of a span's name, scope or status description
MAX_ATTRIBUTES = 64  # per span, read back
SEP = "\0"
_TYPES = {str: "s", bool: "b", int: "i", float: "f"}

AttributeValue = str | bool | int | float | Sequence[str]


def _typed(value: object) -> str:
    """An attribute's value with its type: str, bool, int, float, and sequences of str (joined by \x1e);
    any other value as its str."""
    kind = type(value)
    if kind is str:
        return "s" + value  # type: ignore[operator]
    if kind is int or kind is float:
        return _TYPES[kind] + repr(value)
    if kind is bool:
        return "b1" if value else "b0"
    if isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value):
        return "S" + "\x1e".join(value)
    return "s" + str(value)


def encode_attributes(attributes: Iterable[tuple[str, object]]) -> list[str]:
    """key, type-and-value, ... of (key, value) pairs, for the texts of a slot or the resource. NUL in a
    text becomes U+FFFD."""
    parts: list[str] = []
    append = parts.append
    for key, value in attributes:
        text = _typed(value)
        append(key if SEP not in key else key.replace(SEP, "\ufffd"))
        append(text if SEP not in text else text.replace(SEP, "\ufffd"))
    return parts


def encode_texts(texts: Sequence[str], attributes: Mapping[str, object], limit: int) -> tuple[bytes, int, bool]:
    """The texts, then as many attributes as fit in limit bytes; returns the bytes, how many attributes
    they hold, and whether any was left out."""
    # The request path's case first: every text free of NUL and short enough, all of it fitting. One
    # join, and one count of the separators to know no text held one of its own.
    parts = [t[:NAME_MAX] for t in texts]
    for key, value in attributes.items():
        parts.append(key)
        parts.append("s" + value if type(value) is str else _typed(value))
    joined = SEP.join(parts)
    if joined.count(SEP) == len(parts) - 1:
        data = joined.encode("utf-8", "replace")
        if len(data) <= limit:
            return data, len(attributes), False
    head = [t[:NAME_MAX] if SEP not in t else t[:NAME_MAX].replace(SEP, "\ufffd") for t in texts]
    encoded_attributes = encode_attributes(attributes.items())
    data = SEP.join(head + encoded_attributes).encode("utf-8", "replace")
    if len(data) <= limit:
        return data, len(encoded_attributes) // 2, False
    data = SEP.join(head).encode("utf-8", "replace")[:limit]
    count = 0
    for i in range(0, len(encoded_attributes), 2):
        pair = (SEP + encoded_attributes[i] + SEP + encoded_attributes[i + 1]).encode("utf-8", "replace")
        if len(data) + len(pair) > limit:
            break
        data += pair
        count += 1
    return data, count, True


@dataclass
class RecordedSpan:
    """One slot, as read back."""

    state: int
    trace_id: int
    span_id: int
    parent_span_id: int | None
    remote_parent: bool
    sampled: bool
    kind: int  # opentelemetry.trace.SpanKind's value
    start_ns: int
    end_ns: int
    status: int
    name: str
    scope: str
    scope_version: str
    status_description: str
    trace_state: str
    attributes: dict[str, AttributeValue]
    cut: bool  # attributes were left out, by the writer or the reader
    linked: bool = False  # to its process span (FLAG_LINKED)


@dataclass
class Region:
    """What a region held when it was read, and what of it could not be read."""

    pid: int
    start_ticks: int
    dropped: int  # spans the process could not record: every slot taken by a span in flight
    resource: dict[str, AttributeValue]
    spans: list[RecordedSpan] = field(default_factory=list)
    torn: int = 0  # slots caught half written
    malformed: int = 0  # slots whose contents make no sense
    evicted: int = 0  # ended spans whose slot a new span took before their export: lost if that never came


class RegionError(ValueError):
    """A region whose header is not one this otelproc reads: nothing in it is used."""


def _value(tag: str, text: str) -> AttributeValue | None:
    try:
        if tag == "s":
            return text
        if tag == "S":
            return text.split("\x1e")
        if tag == "b":
            return text == "1"
        if tag == "i":
            return int(text) if len(text) <= 24 else None
        if tag == "f":
            return float(text) if len(text) <= 32 else None
    except ValueError:
        return None
    return None


def decode_attributes(parts: list[str], count: int) -> tuple[dict[str, AttributeValue], bool]:
    """Pairs of key and typed value; returns them and whether any was unreadable or over MAX_ATTRIBUTES."""
    attributes: dict[str, AttributeValue] = {}
    bad = False
    for i in range(0, min(count, len(parts) // 2) * 2, 2):
        key, coded = parts[i], parts[i + 1]
        value = _value(coded[:1], coded[1:]) if key and coded else None
        if value is None or len(attributes) >= MAX_ATTRIBUTES:
            bad = True
            continue
        attributes[key[:NAME_MAX]] = value
    return attributes, bad


def read_region(data: bytes) -> Region:
    """Reads a region's bytes, as the process left them. RegionError when the header is not ours."""
    if len(data) < HEADER_SIZE:
        raise RegionError(f"{len(data)} bytes, not a span region")
    magic, version, slot_size, slots, pid, start_ticks, dropped, evicted, resource_len = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise RegionError("not a span region of version 1")
    if slot_size != SLOT_SIZE or slots > SLOTS or resource_len > RESOURCE_MAX:
        raise RegionError(f"a region of {slots} slots of {slot_size} bytes, not of at most {SLOTS} of {SLOT_SIZE}")
    resource_parts = data[HEADER.size : HEADER.size + resource_len].decode("utf-8", "replace").split(SEP)
    resource, _ = decode_attributes(resource_parts, MAX_ATTRIBUTES)
    region = Region(pid, start_ticks, dropped, resource, evicted=evicted)
    for index in range(slots):
        at = HEADER_SIZE + index * SLOT_SIZE
        if at + SLOT_SIZE > len(data):
            break
        seq, state, kind, flags, status, text_len, attr_count, end, ids, span_id, parent, start = SLOT.unpack_from(
            data, at
        )
        if state == FREE:
            continue
        if seq & 1:
            region.torn += 1
            continue
        if state not in (STARTED, ENDED, ABORTED) or text_len > TEXT_MAX or kind > 4 or status > STATUS_ERROR:
            region.malformed += 1
            continue
        texts = data[at + SLOT.size : at + SLOT.size + text_len].decode("utf-8", "replace").split(SEP)
        if len(texts) < 5:
            region.malformed += 1
            continue
        attributes, bad = decode_attributes(texts[5:], attr_count)
        trace_id, span_id_int = int.from_bytes(ids, "big"), int.from_bytes(span_id, "big")
        if not trace_id or not span_id_int:
            region.malformed += 1
            continue
        parent_id = int.from_bytes(parent, "big") if flags & FLAG_PARENT else None
        region.spans.append(
            RecordedSpan(
                state,
                trace_id,
                span_id_int,
                parent_id or None,
                bool(flags & FLAG_REMOTE_PARENT),
                bool(flags & FLAG_SAMPLED),
                kind,
                start,
                end,
                status,
                texts[0][:NAME_MAX],
                texts[1][:NAME_MAX],
                texts[2][:NAME_MAX],
                texts[3][:NAME_MAX],
                texts[4][:NAME_MAX],
                attributes,
                bool(flags & FLAG_CUT) or bad,
                bool(flags & FLAG_LINKED),
            )
        )
    return region
