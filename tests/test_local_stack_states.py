"""The local stack's partial states: a component that died before down.sh, a start that
fails half way, an earlier stack that ended without down.sh. From each, down.sh and up.sh find the
way out on their own or name the command that does, say what they did, and leave nothing of the
stack running and no probe pinned.

Each test starts its own stack as test_local_stack.py does (free ports, its own stack directory and
pin directory, the session's interpreter name); a start takes a few seconds once the Jaeger binary
is built.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

from support.local_stack import DOWN, UP, running, sessions, stack_env


STACK = ("prometheus", "jaeger", "collector", "otelproc", "demo")  # up.sh's start order


class Stack:
    """One stack directory, pin directory and set of ports, and the scripts run on them."""

    def __init__(self, stack_dir: Path, test_python: str, pin_dir: str) -> None:
        self.dir = stack_dir
        self.test_python = test_python
        self.pin_dir = pin_dir
        self.env = self._new_env()

    def _new_env(self) -> dict[str, str]:
        return {**stack_env(self.dir, self.test_python), "OTELPROC_PIN_DIR": self.pin_dir}

    def up(self, **extra: str) -> subprocess.CompletedProcess[str]:
        for _ in range(3):  # a free port chosen here may be taken by another program before up.sh checks it
            result = subprocess.run([str(UP)], env={**self.env, **extra}, capture_output=True, text=True, timeout=600)
            if "is taken; set" not in result.stderr:
                break
            self.env = self._new_env()
        return result

    def down(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(DOWN)], env=self.env, capture_output=True, text=True, timeout=300)

    def pid(self, name: str) -> int:
        return int((self.dir / f"{name}.pid").read_text().split()[0])

    def processes(self) -> list[psutil.Process]:
        """Every running process whose output goes to one of the stack's logs: all up.sh started, and their
        children, whether or not a pid file still names them."""
        found = []
        for process in psutil.process_iter():
            try:
                if any(os.readlink(f"/proc/{process.pid}/fd/{fd}").startswith(f"{self.dir}/") for fd in (1, 2)):
                    if running(process):
                        found.append(process)
            except OSError:
                pass
        return found

    def pinned(self) -> list[Path]:
        """The probes pinned in the stack's pin directory."""
        return sorted(Path(self.pin_dir).glob("*")) if self.pin_dir and Path(self.pin_dir).is_dir() else []

    def logs(self) -> str:
        return "".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) + "\n"
            for log in sorted(self.dir.glob("*.log"))
        )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits for the processes to end; returns those still running."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in processes if running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def reaped(processes: list[psutil.Process], timeout: float) -> None:
    """Waits (at most timeout) until the ended processes are reaped too: not even zombies."""
    deadline = time.monotonic() + timeout
    while any(p.is_running() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)


def end(processes: list[psutil.Process], sig: int, timeout: float) -> list[psutil.Process]:
    """Signals the processes (ours: psutil checks their start times) and waits; returns those still running."""
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    return gone(processes, timeout)


def assert_nothing_left(stack: Stack, started: list[psutil.Process]) -> None:
    assert [p for p in started if running(p)] == [], "processes of the stack still running"
    assert stack.processes() == [], "processes writing to the stack's logs still running"
    assert not list(stack.dir.glob("*.pid")), "pid files left"
    assert stack.pinned() == [], f"a probe left pinned in {stack.pin_dir}"


@pytest.fixture
def stack(tmp_path, test_python, pin_root) -> Iterator[Stack]:
    """A stack of the test's own; at teardown, even when the test failed, nothing of it is left:
    down.sh, then what it left is killed (by identity) and the pin directory emptied."""
    stack = Stack(tmp_path / "stack", test_python, pin_root.new_dir())
    try:
        yield stack
    finally:
        print(stack.logs())  # shown by pytest when the test fails
        if list(stack.dir.glob("*.pid")) or stack.processes():
            stack.down()
        end(stack.processes(), signal.SIGKILL, 10)
        pin_root.remove(stack.pin_dir)


def start(stack: Stack) -> list[psutil.Process]:
    up = stack.up()
    assert up.returncode == 0, output(up)
    started = sessions(stack.dir)
    assert {p.pid for p in started} >= {stack.pid(name) for name in STACK}
    assert stack.pinned(), "otelproc pins its probe (else the checks for none left prove nothing)"
    return started


@pytest.mark.parametrize("component", STACK)
def test_down_after_a_component_died_stops_the_rest(stack, component):
    started = start(stack)
    pids = {name: stack.pid(name) for name in STACK}
    victim = pids[component]
    session = [p for p in started if os.getsid(p.pid) == victim]
    # SIGTERM to the leader, as a person would (a crash, SIGKILL, is the whole-stack test's); its children follow it
    os.kill(victim, signal.SIGTERM)
    if left := gone(session, 30):
        end(left, signal.SIGKILL, 10)
    assert not [p for p in session if running(p)], f"{component}'s session still runs after SIGTERM and SIGKILL"
    reaped(session, 10)  # an empty session, as where init reaps at once (this VM's reaps zombies late)

    # up.sh meanwhile neither starts a second stack nor dead-ends: it names the command that helps.
    again = stack.up()
    assert again.returncode != 0, output(again)
    assert "partly up" in again.stderr and f"running; {component} not;" in again.stderr, output(again)
    assert "run deploy/local/down.sh" in again.stderr, output(again)
    assert set(sessions(stack.dir)) <= set(started), "up.sh started nothing"

    down = stack.down()
    assert down.returncode == 0, output(down)
    assert f"local stack: {component} was already gone (pid {victim}" in down.stdout, output(down)
    for other in STACK:
        if other != component:
            assert f"local stack: stopping {other} (pid {pids[other]})" in down.stdout, output(down)
    assert "removing otelproc's pinned probe" in down.stdout, output(down)
    assert_nothing_left(stack, started)

    # and down.sh again: nothing to stop, still exit 0
    again = stack.down()
    assert again.returncode == 0, output(again)
    assert "no pid files" in again.stdout, output(again)


def test_a_failed_start_stops_what_it_started_and_up_works_after(stack):
    failed = stack.up(OTELPROC_USAGE="gpu")  # not a usage group: otelproc refuses to start
    assert failed.returncode != 0, output(failed)
    assert "OTELPROC_USAGE: gpu: not a usage group" in failed.stderr, output(failed)
    for name in ("collector", "jaeger", "prometheus"):
        assert f"local stack: stopping {name} (pid" in failed.stderr, output(failed)
    assert "local stack: otelproc was already gone" in failed.stderr, output(failed)
    assert "stopping demo" not in failed.stderr and "demo was" not in failed.stderr, output(failed)  # not started
    assert "nothing of the stack is left running" in failed.stderr, output(failed)
    assert_nothing_left(stack, [])

    started = start(stack)
    down = stack.down()
    assert down.returncode == 0, output(down)
    assert_nothing_left(stack, started)


def test_up_after_the_whole_stack_died_cleans_up_and_starts(stack):
    started = start(stack)
    pids = {name: stack.pid(name) for name in STACK}
    assert end(started, signal.SIGKILL, 10) == []  # a crash of everything: pid files and the pinned probe stay
    assert stack.pinned(), "the crash leaves otelproc's probe pinned"

    again = stack.up()
    assert again.returncode == 0, output(again)
    for name in STACK:
        assert f"local stack: {name} was already gone (pid {pids[name]}" in again.stdout, output(again)
    assert "removing otelproc's pinned probe" in again.stdout, output(again)
    # the new otelproc started afresh, not on the dead stack's probe
    assert "resumed the probe pinned" not in (stack.dir / "otelproc.log").read_text(), stack.logs()
    restarted = sessions(stack.dir)
    assert not set(restarted) & set(started)

    down = stack.down()
    assert down.returncode == 0, output(down)
    assert_nothing_left(stack, started + restarted)
