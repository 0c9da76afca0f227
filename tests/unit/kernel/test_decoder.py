"""The decoder: records as the shipped object lays them out (its BTF, read through libbpf.so.1) to ProcessEvents.

The fuzz loop is seeded and bounded in time (FUZZ_SECONDS, default 3 s): the decoder returns an event or
raises MalformedRecord, nothing else.
"""

from __future__ import annotations

import os
import random
import time

from otelproc.clock import BootClock
from otelproc.kernel import record
from otelproc.kernel.decoder import MalformedRecord, cpu_split, decode, default_layout
from otelproc.model import NS_PER_TICK, PAGE_SIZE, EventKind, OomKill, ProcessEvent, SignalSent, Usage
from support.events import fuzzed_records


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


# Every header field holds a value no other field holds, so that a field read into the wrong slot of
# ProcessEvent (decode() builds it positionally) shows up as a wrong value. Times are whole ticks apart.
HEADER = dict(
    time_ns=7_000 * NS_PER_TICK + 11,
    start_time_ns=5_000 * NS_PER_TICK + 13,
    cgroup_id=0xC6_0001,
    pid=1001,
    ppid=1002,
    tid=1003,
    vpid=1004,
    pidns=4026530005,
    uid=1006,
    gid=1007,
    comm=b"comm-field\0",
    cgroup=b"cgroup-field\0",
)


def expected(clock: BootClock, kind: EventKind, **fields: object) -> dict[str, object]:
    """The ProcessEvent HEADER decodes to, built by keyword; fields: what the kind adds."""
    event = dict(
        kind=kind,
        time=HEADER["time_ns"] + clock.offset_ns,
        pid=1001,
        ppid=1002,
        vpid=1004,
        pidns=4026530005,
        tid=1003,
        uid=1006,
        gid=1007,
        comm="comm-field",
        exe=None,
        argv=None,
        start_time=HEADER["start_time_ns"] + clock.offset_ns,
        start_ticks=5_000,
        exit_code=None,
        signal=None,
        core_dumped=False,
        cgroup_id=0xC6_0001,
        cgroup="cgroup-field",
        truncated=(),
        untracked=False,
        otel_env=(),
    )
    event.update(fields)
    return ProcessEvent(**event)._asdict()


def decoded(raw: bytes, clock: BootClock) -> dict[str, object]:
    return decode(raw, clock)._asdict()


def test_each_event_field_comes_from_its_record_field():
    layout, clock = default_layout(), BootClock()
    exe, argv, env = b"/usr/bin/python3.11\0", b"python3\0app.py\0", b"HOME=/root\0OTEL_SERVICE_NAME=shop\0"
    exec_record = layout.pack(
        exe + argv + env,
        kind=1,
        flags=record.EVENT_F_ARGV_CUT | record.EVENT_F_UNTRACKED,
        exe_len=len(exe),
        argv_len=len(argv),
        env_len=len(env),
        **HEADER,
    )
    assert decoded(exec_record, clock) == expected(
        clock,
        EventKind.EXEC,
        exe="/usr/bin/python3.11",
        argv=("python3", "app.py"),
        otel_env=(("OTEL_SERVICE_NAME", "shop"),),
        truncated=("argv",),
        untracked=True,
    )

    fork_record = layout.pack(kind=2, flags=record.EVENT_F_EXE_CUT | record.EVENT_F_ENV_CUT, **HEADER)
    assert decoded(fork_record, clock) == expected(clock, EventKind.FORK, truncated=("exe", "env"))

    usage = dict(
        cpu_ns=4_000,
        utime_ns=3,
        stime_ns=1,
        maxrss_pages=21,
        min_flt=22,
        maj_flt=23,
        nvcsw=24,
        nivcsw=25,
        read_bytes=26,
        write_bytes=27,
    )
    used = Usage(
        cpu_user_ns=3_000,
        cpu_system_ns=1_000,
        max_rss_bytes=21 * PAGE_SIZE,
        minor_faults=22,
        major_faults=23,
        voluntary_switches=24,
        involuntary_switches=25,
        disk_read_bytes=26,
        disk_write_bytes=27,
    )
    exited = layout.pack(kind=3, exit_code=7 << 8, **usage, **HEADER)
    assert decoded(exited, clock) == expected(clock, EventKind.EXIT, exit_code=7, usage=used)
    killed = layout.pack(kind=3, exit_code=0x80 | 9, flags=record.EVENT_F_USAGE_CUT, **usage, **HEADER)
    assert decoded(killed, clock) == expected(
        clock, EventKind.EXIT, signal=9, core_dumped=True, usage=used, truncated=("usage",)
    )

    sent = dict(signo=15, si_code=-6, sender_pid=4242, sender_comm=b"sender-field\0")
    signalled = layout.pack(kind=4, flags=record.EVENT_F_SENDER_KERNEL, **sent, **HEADER)
    assert decoded(signalled, clock) == expected(
        clock,
        EventKind.SIGNAL,
        sent=SignalSent(
            time=HEADER["time_ns"] + clock.offset_ns,
            signal=15,
            code=-6,
            from_kernel=True,
            sender_pid=4242,
            sender_comm="sender-field",
        ),
    )

    memory = dict(total_vm=31, anon_rss=32, file_rss=33, shmem_rss=34, pgtables_bytes=35, score_adj=-36)
    chosen = layout.pack(kind=5, flags=record.EVENT_F_OOM_MEMCG, **memory, **HEADER)
    assert decoded(chosen, clock) == expected(
        clock,
        EventKind.OOM,
        oom=OomKill(
            time=HEADER["time_ns"] + clock.offset_ns,
            memcg=True,
            cgroup="cgroup-field",
            total_vm=31 * PAGE_SIZE,
            anon_rss=32 * PAGE_SIZE,
            file_rss=33 * PAGE_SIZE,
            shmem_rss=34 * PAGE_SIZE,
            pgtables=35,
            score_adj=-36,
        ),
    )

    announced = layout.pack(kind=6, region_fd=1234, **HEADER)
    assert decoded(announced, clock) == expected(clock, EventKind.REGION, region_fd=1234)

    # Every field of every part was given a value of its own above (reserved is padding nobody reads).
    given = {"kind", "flags", "exit_code", "exe_len", "argv_len", "env_len", "region_fd"}
    given |= {*HEADER, *usage, *sent, *memory}
    assert given == set(layout.fields._fields) - {"reserved"}
    assert {layout.paths[name].split(".")[0] for name in given} == {"header", "usage", "oom", "signal", "region"}
