"""Stopping `otelproc run`: Ctrl-C removes the probe, SIGTERM keeps it, and no collector holds a stop up.

Real `otelproc run` subprocesses, real spans of real processes (started by pytest,
which no sidecar here tracks), real collectors: one that never answers, a port
that refuses, and the OTLP receivers of support/otlp_receiver.py.
"""

from __future__ import annotations

import re
import signal
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from otelproc.kernel import libbpf, pins
from support.cli import QUIET
from support.ports import free_port
from support.subjects import MATCH_TEST, run_all

STOP_TIMEOUT = 3.0
MARGIN = 1.5  # a Python process's exit, and the test's own clock


def prog_ids(pin_dir: str) -> set[int]:
    return {i for probe_dir in pins.probes(Path(pin_dir)) for i in pins.prog_ids(probe_dir)}


def pinned(pin_dir: str) -> list[str]:
    path = Path(pin_dir)
    return [p.name for p in path.iterdir()] if path.exists() else []


def programs_gone(ids: set[int]) -> bool:
    deadline = time.monotonic() + 2  # a link is released after its last reference, through RCU
    while any(libbpf.prog_exists(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(libbpf.prog_exists(i) for i in ids)


def stop_with(side, signum: int) -> tuple[int, float]:
    started = time.monotonic()
    side.proc.send_signal(signum)
    code = side.proc.wait(30)
    return code, time.monotonic() - started


CONSOLE = ("--exporter", "console")


def test_ctrl_c_detaches_the_probe(sidecar, pin_root):
    side = sidecar(*MATCH_TEST, *CONSOLE, env=QUIET)
    pin_dir, state_file = side.env["OTELPROC_PIN_DIR"], Path(side.env["OTELPROC_STATE_FILE"])
    ids = prog_ids(pin_dir)
    assert ids and state_file.exists()
    pin_root.note(pin_dir)  # the session checks at its end too
    assert stop_with(side, signal.SIGINT)[0] == 0
    assert pinned(pin_dir) == []
    assert programs_gone(ids), "its BPF programs are unloaded"
    assert not state_file.exists()
    assert "detached the probe" in side.wait_line("stopped;")


def test_sigterm_leaves_the_probe_pinned(sidecar):
    side = sidecar(*MATCH_TEST, *CONSOLE, env=QUIET)
    pin_dir = side.env["OTELPROC_PIN_DIR"]
    ids = prog_ids(pin_dir)
    assert stop_with(side, signal.SIGTERM)[0] == 0
    assert prog_ids(pin_dir) == ids and all(libbpf.prog_exists(i) for i in ids), "the probe stays pinned and loaded"
    line = side.wait_line("stopped;")
    assert "the probe stays pinned" in line and "`otelproc detach` removes it" in line  # the fixture does


def test_ctrl_c_with_keep_probe_leaves_it_pinned(sidecar):
    side = sidecar(*MATCH_TEST, *CONSOLE, "--keep-probe", env=QUIET)
    pin_dir, state_file = side.env["OTELPROC_PIN_DIR"], Path(side.env["OTELPROC_STATE_FILE"])
    ids = prog_ids(pin_dir)
    assert stop_with(side, signal.SIGINT)[0] == 0
    assert prog_ids(pin_dir) == ids and all(libbpf.prog_exists(i) for i in ids), "the probe stays pinned and loaded"
    assert state_file.exists()
    assert "the probe stays pinned" in side.wait_line("stopped;")


class SilentCollector:
    """A TCP listener on loopback that accepts connections and never reads or writes."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                return
            self.accepted.append(conn)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def close(self) -> None:
        self.socket.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_collector() -> Iterator[SilentCollector]:
    collector = SilentCollector()
    try:
        yield collector
    finally:
        collector.close()


def kept_count(line: str) -> int:
    """'... 5 spans not delivered in time kept in PATH for the next start' -> 5 ('1 span ...' -> 1)."""
    found = re.search(r"; (\d+) spans? not delivered in time kept in ", line)
    assert found, line
    return int(found[1])


@pytest.mark.parametrize("collector,protocol", [("silent", "grpc"), ("refusing", "grpc"), ("silent", "http/protobuf")])
def test_stop_within_the_timeout_keeps_spans_for_the_next_start(
    sidecar, silent_collector, grpc_receiver, http_receiver, test_python, tmp_path, collector, protocol
):
    endpoint = silent_collector.endpoint if collector == "silent" else f"http://127.0.0.1:{free_port()}"
    args = (
        *MATCH_TEST,
        "--state-file",
        str(tmp_path / "state.json"),
        "--otlp-protocol",
        protocol,
        "--start-span-delay",
        "3600",
    )
    first = sidecar(*args, endpoint=endpoint, env=QUIET)
    before = run_all(test_python, 5, "before")
    time.sleep(1)  # read from the ring buffer and queued; the exporter is stuck, or retrying
    code, took = stop_with(first, signal.SIGTERM)
    assert code == 0
    assert took < STOP_TIMEOUT + MARGIN, f"the stop took {took:.1f} s"
    line = first.wait_line("stopped;")
    assert kept_count(line) == 5, line
    unsent = tmp_path / "unsent-spans.pb"
    assert stat.S_IMODE(unsent.stat().st_mode) == 0o600

    receiver = grpc_receiver if protocol == "grpc" else http_receiver
    second = sidecar(*args, endpoint=receiver.endpoint, env=QUIET)
    (after,) = run_all(test_python, 1, "after")
    receiver.wait_for(lambda _: receiver.of_pid(after) and all(receiver.of_pid(p) for p in before))
    order = [s.attributes["process.pid"] for s in receiver.lifetimes()]
    assert sorted(order[:5]) == sorted(before) and order[5:] == [after], "the kept spans arrive first, once each"
    assert not unsent.exists()
    assert any("sent 5 spans the last otelproc kept" in line for line in second.lines)


def test_a_second_signal_ends_the_stop_at_once(sidecar, silent_collector, test_python, tmp_path):
    side = sidecar(
        *MATCH_TEST,
        "--state-file",
        str(tmp_path / "state.json"),
        "--stop-timeout",
        "60",
        "--start-span-delay",
        "3600",
        endpoint=silent_collector.endpoint,
        env=QUIET,
    )
    run_all(test_python, 3, "stuck")
    time.sleep(1)
    side.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    code, took = stop_with(side, signal.SIGTERM)
    assert code == 0 and took < MARGIN, f"the stop went on for {took:.1f} s after the second SIGTERM"
    assert kept_count(side.wait_line("stopped;")) == 3
    assert (tmp_path / "unsent-spans.pb").exists()


def test_without_a_state_file_unsent_spans_are_dropped_and_said(sidecar, silent_collector, test_python):
    side = sidecar(
        *MATCH_TEST,
        "--state-file",
        "",
        "--stop-timeout",
        "0.5",
        "--start-span-delay",
        "3600",
        endpoint=silent_collector.endpoint,
        env=QUIET,
    )
    run_all(test_python, 2, "nowhere")
    time.sleep(1)
    code, took = stop_with(side, signal.SIGTERM)
    assert code == 0 and took < 0.5 + MARGIN
    line = side.wait_line("stopped;")
    assert "2 spans not delivered in time dropped (no --state-file" in line and "unsent=2" in line
