"""The event stream from the real kernel: real processes, the real probe."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON
from support.subjects import proc_start_ticks

PY_COMM = os.path.basename(PYTHON)[:15]
PTRACE_SEIZE = 0x4206  # linux/ptrace.h: trace a task without stopping it
WALL = 0x40000000  # __WALL: wait for threads as well as processes


def run_py(code: str, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60, **kwargs)


def test_exit_status_parent_and_start_time(kernel_events):
    events = kernel_events()
    # The child reports its own /proc start time, then exits with status 3.
    child = run_py("import sys; print(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]); sys.exit(3)")
    assert child.returncode == 3
    pid = _pid_of(events, child)
    exit_event = events.wait_exit(pid)
    execs = events.of(pid, "exec")
    assert len(execs) == 1 and len(events.of(pid, "exit")) == 1
    assert exit_event.exit_code == 3 and exit_event.signal is None and not exit_event.core_dumped
    assert exit_event.ppid == os.getpid() == execs[0].ppid
    assert exit_event.start_ticks == int(child.stdout) == execs[0].start_ticks
    assert execs[0].exe == PYTHON and execs[0].argv[0] == PYTHON and execs[0].argv[1] == "-c"
    assert execs[0].comm == PY_COMM
    assert execs[0].start_time <= execs[0].time <= exit_event.time


def _pid_of(events, completed: subprocess.CompletedProcess) -> int:
    """The pid of a finished child, found by its exact argv among exec events."""
    found = events.wait_for(lambda evs: any(e.kind == "exec" and list(e.argv) == completed.args for e in evs))
    return [e for e in found if e.kind == "exec" and list(e.argv) == completed.args][-1].pid


def test_sigkill_reports_signal(kernel_events):
    events = kernel_events()
    child = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(60)"])
    events.wait_for(lambda evs: any(e.pid == child.pid and e.kind == "exec" for e in evs))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    exit_event = events.wait_exit(child.pid)
    assert exit_event.signal == signal.SIGKILL and exit_event.exit_code is None
    assert not exit_event.core_dumped


def test_sigsegv_with_core_dump(kernel_events, tmp_path):
    events = kernel_events()
    crash = (
        "import ctypes, resource; "
        "resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)); "
        "ctypes.string_at(0)"
    )
    child = subprocess.Popen([PYTHON, "-c", crash], cwd=tmp_path)
    assert child.wait() == -signal.SIGSEGV
    exit_event = events.wait_exit(child.pid)
    assert exit_event.signal == signal.SIGSEGV and exit_event.exit_code is None
    assert exit_event.core_dumped, f"core_pattern is {Path('/proc/sys/kernel/core_pattern').read_text()!r}"


def test_eight_threads_one_exit(kernel_events):
    events = kernel_events()
    code = (
        "import threading, time\n"
        "ts = [threading.Thread(target=time.sleep, args=(0.3,)) for _ in range(8)]\n"
        "[t.start() for t in ts]\n"
        "import os; assert len(os.listdir('/proc/self/task')) == 9\n"
        "[t.join() for t in ts]\n"
    )
    child = subprocess.Popen([PYTHON, "-c", code])
    assert child.wait() == 0
    events.wait_exit(child.pid)
    events.settle()
    assert len(events.of(child.pid, "exit")) == 1


def test_threads_dying_together_one_exit(kernel_events):
    """os._exit with threads running: every thread exits at once, one exit event."""
    events = kernel_events()
    code = "import threading, time, os\n[threading.Thread(target=time.sleep, args=(9,)).start() for _ in range(8)]\nos._exit(4)\n"
    child = subprocess.Popen([PYTHON, "-c", code])
    assert child.wait() == 4
    assert events.wait_exit(child.pid).exit_code == 4
    events.settle()
    assert len(events.of(child.pid, "exit")) == 1


def test_rename_keeps_exit(kernel_events):
    events = kernel_events()
    code = "open('/proc/self/comm', 'w').write('renamed-worker'); import time; time.sleep(0.1)"
    child = subprocess.Popen([PYTHON, "-c", code])
    assert child.wait() == 0
    exit_event = events.wait_exit(child.pid)
    assert exit_event.comm == "renamed-worker"
    assert events.of(child.pid, "exec")[0].comm == PY_COMM


def test_exec_from_non_leader_thread(kernel_events):
    events = kernel_events()
    code = (
        "import os, sys, threading, time\n"
        "def go():\n"
        "    print(threading.get_native_id(), flush=True)\n"
        "    os.execv(sys.executable, [sys.executable, '-c', 'import sys; sys.exit(6)'])\n"
        "threading.Thread(target=go).start()\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    tid = int(child.stdout.readline())
    assert child.wait() == 6
    exit_event = events.wait_exit(child.pid)
    assert tid != child.pid
    execs = events.of(child.pid, "exec")
    assert len(execs) == 2  # the first program, then the exec from the thread
    assert execs[1].tid == tid and execs[1].pid == child.pid
    assert execs[1].argv[-1] == "import sys; sys.exit(6)"
    assert exit_event.exit_code == 6
    assert [e for e in events.events if e.pid == tid] == []


def test_fork_only_child(kernel_events):
    events = kernel_events()
    code = "import os\npid = os.fork()\nif pid == 0:\n    os._exit(5)\nprint(pid, flush=True)\nos.waitpid(pid, 0)\n"
    parent = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=30)
    child_pid = int(parent.stdout)
    exit_event = events.wait_exit(child_pid)
    forks = events.of(child_pid, "fork")
    assert len(forks) == 1 and events.of(child_pid, "exec") == []
    parent_pid = forks[0].ppid
    assert exit_event.ppid == parent_pid and exit_event.exit_code == 5
    assert events.of(parent_pid, "exec"), "the parent is the tracked python that forked"
    assert forks[0].comm == PY_COMM


def test_pid_namespace_vpid(kernel_events):
    events = kernel_events()
    code = "import os; print(os.getpid(), os.stat('/proc/self/ns/pid').st_ino, flush=True)"
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", PYTHON, "-c", code], capture_output=True, text=True, timeout=30
    )
    inner_pid, inner_ns = map(int, out.stdout.split())
    found = events.wait_for(lambda evs: any(e.kind == "exit" and e.pidns == inner_ns for e in evs))
    exit_event = [e for e in found if e.kind == "exit" and e.pidns == inner_ns][0]
    assert exit_event.vpid == inner_pid == 1
    assert exit_event.pid != exit_event.vpid
    assert inner_ns != os.stat("/proc/self/ns/pid").st_ino


def test_unmatched_storm_gives_no_events(kernel_events):
    events = kernel_events()
    pids = []
    for _ in range(200):
        p = subprocess.Popen(["/bin/true"])
        pids.append(p.pid)
        p.wait()
    marker = run_py("pass")  # a matched process after the storm: once it is in, the storm was seen
    _pid_of(events, marker)
    events.settle()
    assert [e for e in events.events if e.pid in pids] == []
    assert [e for e in events.events if e.comm == "true"] == []


def test_burst_of_2000_all_events_no_loss(kernel_events, tmp_path):
    prog = tmp_path / "otpburst"
    shutil.copy("/bin/true", prog)
    events = kernel_events(match="otpburst")
    pids = []
    started = time.monotonic()
    for _ in range(2000):
        pids.append(os.posix_spawn(str(prog), [str(prog)], os.environ))
    for pid in pids:
        os.waitpid(pid, 0)
    spawn_seconds = time.monotonic() - started
    wanted = set(pids)
    events.wait_for(lambda evs: sum(1 for e in evs if e.pid in wanted) >= 4000, timeout=60)
    events.settle()
    mine = [e for e in events.events if e.pid in wanted]
    assert sorted((e.pid, e.kind) for e in mine) == sorted([(p, "exec") for p in pids] + [(p, "exit") for p in pids])
    assert events.probe.lost() == {"ringbuf_full": 0, "tracked_map_full": 0, "unattended": 0}
    print(f"2000 processes spawned in {spawn_seconds:.2f} s")


def test_start_ticks_match_proc_for_running_process(kernel_events):
    events = kernel_events()
    child = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(30)"])
    try:
        found = events.wait_for(lambda evs: any(e.pid == child.pid for e in evs))
        exec_event = [e for e in found if e.pid == child.pid][0]
        assert exec_event.start_ticks == proc_start_ticks(child.pid)
        assert exec_event.uid == os.getuid() and exec_event.gid == os.getgid()
        assert exec_event.vpid == child.pid and exec_event.pidns == os.stat("/proc/self/ns/pid").st_ino
    finally:
        child.kill()
        child.wait()


def test_argv_is_cut_and_flagged(kernel_events):
    events = kernel_events()
    big = "x" * 100_000
    child = subprocess.run([PYTHON, "-c", "pass", big], timeout=30)
    assert child.returncode == 0
    found = events.wait_for(lambda evs: any(e.kind == "exec" and e.argv and e.argv[-1].startswith("xxx") for e in evs))
    exec_event = [e for e in found if e.kind == "exec" and e.argv and e.argv[-1].startswith("xxx")][0]
    assert "argv" in exec_event.truncated
    assert exec_event.argv[:3] == (PYTHON, "-c", "pass") and len(exec_event.argv[-1]) < len(big)


def test_allowlisted_environment_only(kernel_events):
    events = kernel_events()
    env = {
        "PATH": "/usr/bin",
        "OTEL_SERVICE_NAME": "billing",
        "TRACEPARENT": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "DB_PASSWORD": "hunter2",
    }
    child = subprocess.run([PYTHON, "-c", "pass"], env=env, timeout=30)
    pid = _pid_of(events, child)
    exec_event = events.of(pid, "exec")[0]
    assert dict(exec_event.otel_env) == {"OTEL_SERVICE_NAME": "billing", "TRACEPARENT": env["TRACEPARENT"]}
    assert "hunter2" not in repr(exec_event)


# The leader and another thread each call the raw exit syscall (not exit_group), with
# different codes. The thread exits first but is held, by a ptrace stop, inside its
# exit; the leader then exits, and being the last to begin its exit it sets the group's
# status. The held thread is the last to die: its own code is not what wait() reports.
RAW_EXITS = """
import ctypes, os, platform, sys, threading, time
SYS_exit = {"x86_64": 60, "aarch64": 93}[platform.machine()]
libc = ctypes.CDLL(None)
def thread():
    print(threading.get_native_id(), flush=True)
    sys.stdin.readline()
    libc.syscall(SYS_exit, 5)
threading.Thread(target=thread).start()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
libc.syscall(SYS_exit, 3)
"""
PTRACE_CONT, PTRACE_SEIZE, PTRACE_O_TRACEEXIT, WALL = 7, 0x4206, 0x40, 0x40000000


def test_exit_status_is_the_one_wait_reports(kernel_events, tmp_path):
    events = kernel_events()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    go = tmp_path / "leader-go"
    child = subprocess.Popen(
        [PYTHON, "-c", RAW_EXITS, str(go)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        tid = int(child.stdout.readline())
        assert libc.ptrace(PTRACE_SEIZE, tid, None, PTRACE_O_TRACEEXIT) == 0, os.strerror(ctypes.get_errno())
        child.stdin.write("exit\n")
        child.stdin.flush()
        _, status = os.waitpid(tid, WALL)
        assert status >> 8 == signal.SIGTRAP | (6 << 8), "the thread stops in its exit (PTRACE_EVENT_EXIT)"
        go.touch()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/task/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the leader did not exit"
            time.sleep(0.01)
        assert libc.ptrace(PTRACE_CONT, tid, None, None) == 0
        os.waitpid(tid, WALL)  # the traced thread is reaped by its tracer
    finally:
        if child.poll() is None and child.returncode is None:
            child.kill()
    assert child.wait(10) == 3
    assert events.wait_exit(child.pid).exit_code == 3


SIGNALED = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: print('usr1', flush=True))
signal.signal(signal.SIGTERM, lambda *_: print('term', flush=True))
print('ready', flush=True)
time.sleep(60)
"""


def test_signals_recorded_are_the_ones_that_can_end_it(kernel_events):
    """A handled SIGUSR1 and a SIGCHLD change nothing: no record. A handled SIGTERM asks it to
    stop: recorded. A SIGUSR2 with no handler ends it: recorded, with its sender."""
    events = kernel_events()
    child = subprocess.Popen([PYTHON, "-c", SIGNALED], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    for signum, answer in ((signal.SIGUSR1, "usr1\n"), (signal.SIGCHLD, None), (signal.SIGTERM, "term\n")):
        os.kill(child.pid, signum)
        if answer:
            assert child.stdout.readline() == answer
    os.kill(child.pid, signal.SIGUSR2)
    assert child.wait() == -signal.SIGUSR2
    events.wait_exit(child.pid)
    sent = [e.sent for e in events.of(child.pid, "signal")]
    assert [(s.signal, s.sender_pid, s.code, s.from_kernel) for s in sent] == [
        (signal.SIGTERM, os.getpid(), 0, False),
        (signal.SIGUSR2, os.getpid(), 0, False),
    ]
    assert {s.sender_comm for s in sent} == {Path("/proc/self/comm").read_text().strip()}


# The process's own account of itself (getrusage(RUSAGE_SELF)), printed just before it ends.
SELF_USAGE = (
    "r = resource.getrusage(resource.RUSAGE_SELF)\n"
    "os.write(1, f'{r.ru_utime + r.ru_stime!r} {r.ru_minflt} {r.ru_nvcsw} {r.ru_nivcsw}'.encode())\n"
)


def assert_usage_between(usage, before: bytes, waited) -> None:
    """The exit record's usage lies between what the process counted of itself just before its end and
    what wait4() reports after it. The kernel's counters only grow; the record is written when the last
    thread reaches sched_process_exit, and what the exit does after that (its memory torn down, and its
    threads preempted on the way out as often as the machine's load makes them) is in wait4()'s figures
    only: so no tighter bound holds for the context switches whatever the load."""
    cpu_before, minflt_before, nvcsw_before, nivcsw_before = before.split()
    cpu, waited_cpu = (usage.cpu_user_ns + usage.cpu_system_ns) / 1e9, waited.ru_utime + waited.ru_stime
    assert float(cpu_before) <= cpu <= waited_cpu + 1e-5, (before, usage, waited)  # wait4() has whole µs
    assert int(minflt_before) <= usage.minor_faults <= waited.ru_minflt
    assert int(nvcsw_before) <= usage.voluntary_switches <= waited.ru_nvcsw
    assert int(nivcsw_before) <= usage.involuntary_switches <= waited.ru_nivcsw


@pytest.mark.parametrize("load", ["idle", "busy_cores"])
def test_usage_of_threads_dying_together_is_the_whole_process(load, kernel_events, request):
    """Four busy threads killed at once by os._exit: the exit record counts them all, as wait4() does,
    on an idle machine and on one whose every core is busy."""
    if load == "busy_cores":
        request.getfixturevalue("busy_cores")
    events = kernel_events()
    code = (
        "import os, resource, threading, time\n"
        "def burn():\n"
        "    while True:\n"
        "        pass\n"
        "for _ in range(4):\n"
        "    threading.Thread(target=burn, daemon=True).start()\n"
        "while time.process_time() < 0.5:  # CPU time, not wall time: as much whatever the load\n"
        "    time.sleep(0.01)\n" + SELF_USAGE + "os._exit(0)\n"
    )
    child = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE)
    _, status, kernel = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    before = child.stdout.read()
    usage = events.wait_exit(child.pid).usage
    cpu, expected = (usage.cpu_user_ns + usage.cpu_system_ns) / 1e9, kernel.ru_utime + kernel.ru_stime
    # Every thread's time is in the record: what the exit uses after it is microseconds of CPU,
    # however long it waits for one.
    assert expected >= 0.5 and abs(cpu - expected) <= 0.05 * expected, (usage, kernel)
    assert usage.minor_faults == kernel.ru_minflt
    assert_usage_between(usage, before, kernel)


# A thread that has run and died while a tracer holds it: a traced thread is not released at the end of its
# exit but when its tracer reaps it, so it is still on its group's list, its counters its own and not yet
# in the group's totals, when the last thread exits (here the main one, once it sees the thread a zombie).
TRACED_THREAD = (
    r"""
import os, resource, sys, threading, time
go = threading.Event()
def burn():
    go.wait()
    end = time.thread_time() + 0.3
    while time.thread_time() < end:
        pass
worker = threading.Thread(target=burn)
worker.start()
print(worker.native_id, flush=True)
sys.stdin.readline()  # traced from here on
go.set()
worker.join()
stat = f"/proc/self/task/{worker.native_id}/stat"
while open(stat).read().rsplit(")", 1)[1].split()[0] != "Z":
    time.sleep(0.01)
"""
    + SELF_USAGE
    + "os._exit(0)\n"
)


def test_usage_counts_a_dead_thread_its_tracer_has_not_released(kernel_events):
    libc = ctypes.CDLL(None, use_errno=True)
    events = kernel_events()
    child = subprocess.Popen([PYTHON, "-c", TRACED_THREAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    worker = int(child.stdout.readline())
    if libc.ptrace(PTRACE_SEIZE, worker, None, None) != 0:
        child.kill()
        child.wait()
        raise AssertionError(f"PTRACE_SEIZE: {os.strerror(ctypes.get_errno())}")
    try:
        child.stdin.write(b"go\n")
        child.stdin.flush()
        exited = events.wait_exit(child.pid)  # written while this test holds the dead worker
    finally:
        os.waitpid(worker, WALL)  # the tracer reaps the worker, which releases it: the group can be reaped
    _, status, kernel = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0
    cpu, expected = (exited.usage.cpu_user_ns + exited.usage.cpu_system_ns) / 1e9, kernel.ru_utime + kernel.ru_stime
    assert expected > 0.3 and abs(cpu - expected) <= 0.05 * expected, (exited.usage, kernel)
    assert exited.truncated == ()
    assert_usage_between(exited.usage, child.stdout.read(), kernel)
