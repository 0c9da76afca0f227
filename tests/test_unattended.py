"""A probe nobody reads is bounded: past --unattended-limit it records no new lifetimes, only counts them.

The probe stays pinned while otelproc is down and records what happens meanwhile; an
otelproc that never comes back must not leave it recording for ever. Real kernel, real
otelproc, real processes started from the (untracked) test runner.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

from otelproc.kernel import pins
from otelproc.kernel.probe import Probe, ProbeConfig
from otelproc.matching import MatchRule
from support import PYTHON, REPO
from support.subjects import TEST_COMM, ended_at, spawn, waiting

QUIET = {"OTEL_METRICS_EXPORTER": "none", "OTEL_BSP_SCHEDULE_DELAY": "200"}
LIMIT_S = 3
EXITS = "import sys; sys.exit(int(sys.argv[1]))"


def run_batch(test_python: str, status: int, n: int = 3) -> list[int]:
    """n subjects, one after another, each exiting with status; their pids."""
    pids = []
    for _ in range(n):
        child = spawn(test_python, EXITS, str(status))
        assert child.wait(30) == status
        pids.append(child.pid)
    return pids


def test_an_unread_probe_records_no_new_lifetime_past_the_limit(
    sidecar, grpc_receiver, test_python, pin_root, tmp_path
):
    pin_dir = pin_root.new_dir()
    args = [
        "--match",
        TEST_COMM,
        "--adopt",
        "false",
        "--state-file",
        str(tmp_path / "state.json"),
        "--pin-dir",
        pin_dir,
    ]
    first = sidecar(*args, "--unattended-limit", str(LIMIT_S), endpoint=grpc_receiver.endpoint, env=QUIET)
    tracked = waiting(test_python, 5)  # begins while read: its exit is recorded whenever it comes
    grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(tracked.pid, "started"))
    assert first.stop() == 0  # the probe stays pinned, and nobody reads it
    stopped = time.monotonic()

    kept = run_batch(test_python, 6)
    assert time.monotonic() - stopped < LIMIT_S - 1, "the first batch must start well within the limit"
    time.sleep(stopped + LIMIT_S + 1.5 - time.monotonic())
    missed = run_batch(test_python, 7)
    tracked_end = ended_at(tracked)

    # Another limit: not fixed when the probe loads, so it is resumed, not replaced.
    second = sidecar(*args, "--unattended-limit", "60", endpoint=grpc_receiver.endpoint, env=QUIET)
    assert any("resumed the probe pinned in" in line for line in second.lines), second.lines
    line = second.wait_line("the probe ran unattended for")
    said = re.search(r"unattended for ([\d.]+)s: kept (\d+) lifetimes, missed (\d+|none) after the (\S+) limit", line)
    assert said, line
    assert float(said[1]) >= LIMIT_S + 1.5 and said.groups()[1:] == ("3", "3", f"{LIMIT_S}s"), line

    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in [*kept, tracked.pid]), timeout=30)
    for pid in kept:
        (span,) = grpc_receiver.of_pid(pid)
        assert span.attributes["otelproc.start.source"] == "exec", pid
        assert span.attributes["process.exit.code"] == 6, pid
    (span,) = grpc_receiver.of_pid(tracked.pid)
    assert span.attributes["process.exit.code"] == 5
    assert "otelproc.end.approximate" not in span.attributes, "its exit was recorded while nobody read"
    assert abs(span.end_ns - tracked_end) < 500_000_000
    time.sleep(1.5)  # a span of the second batch, were there one, would be here by now
    recorded = [p for p in missed if grpc_receiver.of_pid(p) or grpc_receiver.of_pid(p, "started")]
    assert not recorded, f"lifetimes begun past the limit were recorded: pids {recorded}"
    assert second.stop() == 0
    assert "unattended=3" in second.wait_line("stopped;"), "counted among the drops"


def test_a_probe_that_is_read_skips_nothing_past_the_limit(sidecar, grpc_receiver, test_python):
    """The reader stamps the probe at every poll: however long otelproc runs, the limit never bites."""
    side = sidecar(
        "--match", TEST_COMM, "--adopt", "false", "--unattended-limit", "1", endpoint=grpc_receiver.endpoint, env=QUIET
    )
    pids = []
    for _ in range(6):  # over some three times the limit
        pids += run_batch(test_python, 6, 1)
        time.sleep(0.5)
    grpc_receiver.wait_for(lambda _: all(grpc_receiver.of_pid(p) for p in pids), timeout=30)
    assert all(grpc_receiver.of_pid(p)[0].attributes["otelproc.start.source"] == "exec" for p in pids)
    assert side.stop() == 0
    assert "unattended" not in side.wait_line("stopped;")


def test_a_probe_older_than_the_limit_is_taken_over_without_one(pin_root, tmp_path):
    """A probe pinned by an otelproc without the unattended limit (commit effee35: no reader map, two lost
    counters) is taken over: its counters read as far as it has them, and nothing said about a limit it
    never had."""
    subprocess.run(f"git -C {REPO} archive effee35 otelproc | tar -x -C {tmp_path}", shell=True, check=True)
    pin_dir = Path(pin_root.new_dir())
    pin_old = (
        f"from otelproc.kernel.probe import Probe, ProbeConfig; from otelproc.matching import MatchRule; "
        f"Probe(ProbeConfig(match=(MatchRule('otpnobody'),), pin_dir=Path({str(pin_dir)!r})), print).close()"
    )
    try:
        subprocess.run(
            [PYTHON, "-c", "from pathlib import Path; " + pin_old],
            cwd=tmp_path,
            check=True,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        with Probe(ProbeConfig(match=(MatchRule("otpnobody"),), pin_dir=pin_dir), lambda raw: None) as probe:
            assert probe.previous is not None and probe.last_read is None
            assert probe.previous.lost() == {"ringbuf_full": 0, "tracked_map_full": 0}
            probe.retire_previous(lambda raw: None)
            assert probe.lost()["unattended"] == 0
        assert [p.name for p in pins.probes(pin_dir)] == [probe.pinned_at.name]
    finally:
        pin_root.remove(pin_dir)
