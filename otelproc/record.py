"""The Python mirror of bpf/otelproc.h: the ring-buffer record, its constants, the match-list key.

Field order, types and sizes must equal the C struct; the loader compares this
layout with the struct's BTF in the compiled object before it attaches, and
tests/test_record_layout.py compares it with the C compiler's own offsetof().
"""

from __future__ import annotations

import struct

TASK_COMM_LEN = 16
CGROUP_NAME_MAX = 128
EXE_MAX = 512
ARGV_MAX = 8192
ENV_MAX = 16384
DATA_MAX = EXE_MAX + ARGV_MAX + ENV_MAX

EVENT_EXEC, EVENT_FORK, EVENT_EXIT = 1, 2, 3
KIND_NAMES = {EVENT_EXEC: "exec", EVENT_FORK: "fork", EVENT_EXIT: "exit"}

EVENT_F_EXE_CUT = 1
EVENT_F_ARGV_CUT = 2
EVENT_F_ENV_CUT = 4
EVENT_F_UNTRACKED = 8

LOST_RINGBUF, LOST_TRACKED_FULL, LOST_MAX = 0, 1, 2
LOST_NAMES = {LOST_RINGBUF: "ringbuf_full", LOST_TRACKED_FULL: "tracked_map_full"}

# (name, struct format) in C order; "<" formats add no padding, so the C
# struct must have none either (the layout checks catch it if it does).
EVENT_FIELDS: tuple[tuple[str, str], ...] = (
    ("time_ns", "Q"),
    ("start_time_ns", "Q"),
    ("cgroup_id", "Q"),
    ("kind", "I"),
    ("flags", "I"),
    ("pid", "I"),
    ("ppid", "I"),
    ("tid", "I"),
    ("vpid", "I"),
    ("pidns", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("exit_code", "I"),
    ("exe_len", "H"),
    ("argv_len", "H"),
    ("env_len", "H"),
    ("reserved", "H"),
    ("comm", f"{TASK_COMM_LEN}s"),
    ("cgroup", f"{CGROUP_NAME_MAX}s"),
    ("data", f"{DATA_MAX}s"),
)

# Everything before data[]: what every record holds, and all a fork or exit record holds.
HEADER = struct.Struct("<" + "".join(fmt for name, fmt in EVENT_FIELDS if name != "data"))
EVENT_SIZE = HEADER.size + DATA_MAX

EXE_NAME_LEN = 64
EXE_NAME_KEY = struct.Struct(f"<I{EXE_NAME_LEN}s")  # struct exe_name_key: prefixlen in bits, name bytes


def event_layout() -> tuple[int, dict[str, int]]:
    """Size and byte offset of every field, to compare with the C struct."""
    offsets, offset = {}, 0
    for name, fmt in EVENT_FIELDS:
        offsets[name] = offset
        offset += struct.calcsize("<" + fmt)
    return offset, offsets
