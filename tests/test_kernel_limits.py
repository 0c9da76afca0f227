"""The kernel side's limits: a ring buffer too small for what happens (--ring-buffer-size) and a full map
of tracked processes (--max-processes). What the kernel could not record is counted, and the /proc
sweeps find it again: every process gets one span, none two.

Real `otelproc run` against the real kernel and a real OTLP receiver. The fork and map tests run their
subjects under LONE_COMM, a name no other test's subjects use, so that the tiny ring or map holds only theirs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from support.cli import QUIET
from support.sidecar import summary
from support.subjects import LONE_COMM, MATCH_TEST, finish, spawn, until_finished

FORKER = """
import os, sys
sys.stdin.readline()
r, w = os.pipe()
children = []
for _ in range(int(sys.argv[1])):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # until the parent closes its end
        os._exit(0)
    children.append(pid)
print(" ".join(map(str, children)), flush=True)
sys.stdin.readline()
os.close(w)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_tiny_ring_buffer_losses_are_counted_and_reconciled(sidecar, grpc_receiver, test_python):
    side = sidecar(
        *MATCH_TEST,
        "--ring-buffer-size",
        "4096",
        "--sweep-interval",
        "0.3",
        "--start-span-delay",
        "3600",
        endpoint=grpc_receiver.endpoint,
        env=QUIET,
    )
    big_env = {"PATH": "/usr/bin:/bin", "PADDING": "x" * 3000}  # one exec record fills most of the ring
    os.kill(side.proc.pid, signal.SIGSTOP)  # nothing reads the ring buffer now: it overflows
    try:
        children = [
            spawn(test_python, "import sys, time; sys.stdin.read()", stdin=subprocess.PIPE, env=big_env)
            for _ in range(30)
        ]
        time.sleep(1.5)
    finally:
        os.kill(side.proc.pid, signal.SIGCONT)
    time.sleep(2)  # two sweeps adopt what the kernel tracks but the table does not know
    os.kill(side.proc.pid, signal.SIGSTOP)
    try:
        for child in children:
            child.stdin.close()
        for child in children:
            assert child.wait(30) == 0
        time.sleep(0.5)
    finally:
        os.kill(side.proc.pid, signal.SIGCONT)
    pids = [c.pid for c in children]
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in pids), timeout=30)
    time.sleep(1.5)  # late duplicates, if any, would be here by now
    assert side.stop() == 0
    spans = [grpc_receiver.of_pid(p) for p in pids]
    assert all(len(s) == 1 for s in spans), "every process: one span, none lost, none twice"
    approximate = [s[0] for s in spans if s[0].attributes.get("otelproc.end.approximate")]
    assert approximate, "some exits were lost and closed by the sweep"
    assert all(s.status == "UNSET" and "process.exit.code" not in s.attributes for s in approximate)
    dropped = summary(side)
    assert dropped["ringbuf_full"] > 0
    assert any("dropped" in line and "ringbuf_full" in line for line in side.lines)


def test_forks_lost_in_a_full_ring_buffer_are_still_tracked(sidecar, grpc_receiver, lone_python):
    """The fork handler tracks the child before it reserves ring space for the record: a child whose fork
    record a full ring buffer lost is still tracked, and the sweeps give it its one span."""
    side = sidecar(
        "--match",
        LONE_COMM,
        "--adopt",
        "false",
        "--ring-buffer-size",
        "4096",
        "--sweep-interval",
        "0.3",
        "--start-span-delay",
        "3600",
        endpoint=grpc_receiver.endpoint,
        env=QUIET,
    )
    parent = subprocess.Popen(
        [lone_python, "-c", FORKER, "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin"},
    )
    try:
        time.sleep(1)  # the parent's exec record has been read: the ring is empty
        os.kill(side.proc.pid, signal.SIGSTOP)  # nothing reads the ring now: 60 fork records overflow it
        try:
            parent.stdin.write("fork\n")
            parent.stdin.flush()
            children = [int(p) for p in parent.stdout.readline().split()]
        finally:
            os.kill(side.proc.pid, signal.SIGCONT)
        time.sleep(2)  # sweeps adopt what the kernel tracks and the table does not know
        parent.stdin.write("end\n")
        parent.stdin.flush()
        assert parent.wait(30) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in children), timeout=30)
    time.sleep(1)
    assert all(len(grpc_receiver.of_pid(p)) == 1 for p in children), "one span each, none twice"
    assert side.stop() == 0
    line = side.wait_line("stopped;")
    assert "ringbuf_full" in line, "the ring did overflow: the test tested something"


def test_a_process_refused_by_a_full_map_is_tracked_once_there_is_room(sidecar, grpc_receiver, lone_python):
    """With --max-processes 3, a fourth process is refused, then tracked when one of the three
    ends: its own exit is reported by the kernel (not guessed by a sweep), and so is its child's."""
    side = sidecar(
        "--match",
        LONE_COMM,
        "--adopt",
        "false",
        "--max-processes",
        "3",
        "--sweep-interval",
        "0.3",
        "--start-span-delay",
        "3600",
        endpoint=grpc_receiver.endpoint,
        env=QUIET,
    )
    first = [until_finished(lone_python, f"fill-{i}") for i in range(3)]
    time.sleep(0.5)
    fourth = subprocess.Popen(
        [
            lone_python,
            "-c",
            "import os, sys; sys.stdin.readline(); pid = os.fork()\n"
            "if pid == 0: os._exit(0)\n"
            "print(pid, flush=True); os.waitpid(pid, 0); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin"},
    )
    try:
        side.wait_line("tracked_map_full")  # refused: the map holds the first three
        finish(first[0])  # room for one
        time.sleep(2)  # sweeps see the refusal, then the room
        fourth.stdin.write("fork\n")
        fourth.stdin.flush()
        child = int(fourth.stdout.readline())
        fourth.stdin.write("end\n")
        fourth.stdin.flush()
        assert fourth.wait(30) == 0
    finally:
        finish(*first)
        if fourth.poll() is None:
            fourth.kill()
            fourth.wait()
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(fourth.pid), timeout=30)
    assert span.attributes.get("process.exit.code") == 0 and "otelproc.end.approximate" not in span.attributes
    (child_span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child), timeout=30)
    assert child_span.parent_span_id == span.span_id
    assert side.stop() == 0
