"""Why a process died and what it cost, on its lifetime span: real kernel, real processes, real signals.

Every subject runs as TEST_COMM (the only name the sidecar tracks) and is started by
this test, so every sender and every figure is one the test knows independently.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from support import PYTHON
from support.subjects import EAT_MEMORY, MATCH_TEST, MEMORY_V1, remove_cgroup
from otelproc.kernel import probe as loader

OWN_COMM = Path("/proc/self/comm").read_text().strip()


def wait_ready(child: subprocess.Popen) -> None:
    """Subjects print a line once their signal handlers are in place."""
    assert child.stdout.readline().strip() == "ready"


def test_sigkill_names_the_process_that_sent_it(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen(
        [test_python, "-c", "print('ready', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_ready(child)
    killer = subprocess.Popen(["/bin/kill", "-KILL", str(child.pid)])
    assert killer.wait() == 0
    assert child.wait() == -signal.SIGKILL
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.status == "ERROR"
    assert span.status_message == f"killed by SIGKILL from pid {killer.pid} (kill)"
    assert "otelproc.exit.reason" not in span.attributes  # an ERROR status says it
    assert span.attributes["error.type"] == "SIGKILL"
    assert span.attributes["otelproc.exit.sender"] == "process"
    assert span.attributes["otelproc.exit.sender_pid"] == killer.pid
    assert span.attributes["otelproc.exit.sender_name"] == "kill"
    assert span.attributes["otelproc.exit.signal_code"] == "SI_USER"


HANDLES_SIGTERM = """
import os, signal, sys, time
def stop(signum, frame):
    print('finishing requests', flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGTERM, stop)
print('ready', flush=True)
time.sleep(60)
"""


def test_a_server_that_handles_sigterm_and_reraises_it_stopped_cleanly(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", HANDLES_SIGTERM], stdout=subprocess.PIPE, text=True)
    wait_ready(child)
    child.send_signal(signal.SIGTERM)
    assert child.stdout.readline().strip() == "finishing requests"
    assert child.wait() == -signal.SIGTERM
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.status == "OK" and "error.type" not in span.attributes
    assert span.attributes["otelproc.exit.signal_name"] == "SIGTERM"
    # The process killed itself with the re-raised SIGTERM; who asked it to stop was this test.
    assert span.attributes["otelproc.exit.reason"] == f"stopped by SIGTERM from pid {os.getpid()} ({OWN_COMM})"
    assert span.attributes["otelproc.exit.sender_pid"] == os.getpid()
    events = [attrs for name, _, attrs in span.events if name == "signal"]
    assert [(e["otelproc.signal.name"], e["otelproc.signal.sender"], e["otelproc.signal.code"]) for e in events] == [
        ("SIGTERM", "self", "SI_USER")
    ]


def test_clean_signals_is_a_setting(sidecar, grpc_receiver, test_python):
    sidecar(*MATCH_TEST, "--clean-signals", "INT", endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen(
        [test_python, "-c", "print('ready', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_ready(child)
    child.terminate()
    assert child.wait() == -signal.SIGTERM
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.status == "ERROR"
    assert span.status_message == f"killed by SIGTERM from pid {os.getpid()} ({OWN_COMM})"


def test_sigsegv_is_an_error_from_the_kernel(sidecar, grpc_receiver, test_python, tmp_path):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    crash = "import ctypes; ctypes.string_at(0)"
    plain = subprocess.Popen([test_python, "-c", crash], cwd=tmp_path, stderr=subprocess.DEVNULL)
    # faulthandler catches the fault, prints a traceback, then raises SIGSEGV again itself.
    handled = subprocess.Popen(
        [test_python, "-X", "faulthandler", "-c", crash], cwd=tmp_path, stderr=subprocess.DEVNULL
    )
    assert plain.wait() == -signal.SIGSEGV and handled.wait() == -signal.SIGSEGV
    for child in (plain, handled):
        (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
        assert span.status == "ERROR" and span.attributes["error.type"] == "SIGSEGV"
        assert span.status_message.startswith("killed by SIGSEGV from the kernel (SEGV_MAPERR")
        assert span.attributes["otelproc.exit.sender"] == "kernel"
        assert span.attributes["otelproc.exit.signal_code"] == "SEGV_MAPERR"
        assert "otelproc.exit.sender_pid" not in span.attributes


# A seccomp filter that kills the process at its first getppid(): load the syscall number,
# compare, return SECCOMP_RET_KILL_PROCESS or SECCOMP_RET_ALLOW.
SECCOMP_KILL = """
import ctypes, os, platform, struct
getppid = {"x86_64": 110, "aarch64": 173}[platform.machine()]
code = struct.pack("=HBBI", 0x20, 0, 0, 0) + struct.pack("=HBBI", 0x15, 0, 1, getppid)
code += struct.pack("=HBBI", 0x06, 0, 0, 0x80000000) + struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)
buf = ctypes.create_string_buffer(code, len(code))
fprog = struct.pack("=HxxxxxxQ", 4, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, os.strerror(ctypes.get_errno())  # SECCOMP_MODE_FILTER
os.getppid()
"""


def test_a_seccomp_kill_is_the_kernels_and_says_why(sidecar, grpc_receiver, test_python, tmp_path):
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", SECCOMP_KILL], cwd=tmp_path)
    assert child.wait() == -signal.SIGSYS
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.status == "ERROR" and span.attributes["error.type"] == "SIGSYS"
    assert span.status_message.startswith("killed by SIGSYS from the kernel (SYS_SECCOMP")
    assert span.attributes["otelproc.exit.signal_code"] == "SYS_SECCOMP"


BUSY_THEN_BIG = """
import resource, threading, time
def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
worker = threading.Thread(target=burn, args=(0.5,))  # a thread that is gone before the process ends
worker.start()
worker.join()
burn(0.5)
block = bytearray(256 << 20)
block[::4096] = b'x' * len(range(0, 256 << 20, 4096))  # every page touched
r = resource.getrusage(resource.RUSAGE_SELF)  # its own account, just before its end
print(repr(r.ru_utime + r.ru_stime), r.ru_minflt, r.ru_nvcsw, r.ru_nivcsw, flush=True)
"""


@pytest.mark.parametrize("load", ["idle", "busy_cores"])
def test_cpu_time_and_peak_memory_of_the_whole_process(load, sidecar, grpc_receiver, test_python, request):
    if load == "busy_cores":
        request.getfixturevalue("busy_cores")
    sidecar(*MATCH_TEST, "--usage", "cpu,memory,faults,switches,io", endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", BUSY_THEN_BIG], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)  # the kernel's own account, as its parent gets it
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0
    cpu_before, minflt_before, nvcsw_before, nivcsw_before = child.stdout.read().split()
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    a = span.attributes
    cpu = a["process.cpu.time.user"] + a["process.cpu.time.system"]
    assert 0.8 <= cpu <= 1.2 * (usage.ru_utime + usage.ru_stime) + 0.05, (cpu, usage)
    assert abs(cpu - (usage.ru_utime + usage.ru_stime)) <= 0.2 * cpu
    assert abs(a["process.cpu.time.user"] - usage.ru_utime) <= 0.2 * cpu  # split as getrusage splits it
    assert a["otelproc.memory.peak"] >= 256 << 20
    assert a["otelproc.memory.peak"] == usage.ru_maxrss * 1024
    assert 256 << 20 >> 12 <= a["process.paging.faults.minor"] <= usage.ru_minflt
    # Counters that are zero are left out.
    assert a.get("process.paging.faults.major", 0) == usage.ru_majflt
    assert a.get("process.disk.io.read", 0) >= usage.ru_inblock * 512 and a.get("process.disk.io.write", 0) >= 0
    # Between what the process counted of itself just before its end and what wait4() says after it. The
    # span's figures are read when its last thread reaches sched_process_exit; the exit goes on after
    # that: it tears down 256 MiB, preempted there as often as the machine's load makes it, and switches
    # out one last time. wait4() counts all that, the span cannot: no tighter bound holds whatever the load.
    assert float(cpu_before) <= cpu <= usage.ru_utime + usage.ru_stime + 1e-5  # wait4() has whole µs
    assert int(minflt_before) <= a["process.paging.faults.minor"]
    assert int(nvcsw_before) <= a.get("process.context_switches.voluntary", 0) <= usage.ru_nvcsw
    assert int(nivcsw_before) <= a.get("process.context_switches.involuntary", 0) <= usage.ru_nivcsw


BIG_PARENT = """
import os, subprocess, sys
block = bytearray(300 << 20)
block[::4096] = b'x' * len(range(0, 300 << 20, 4096))
child = subprocess.Popen([sys.executable, '-c', 'pass'])
_, _, usage = os.wait4(child.pid, 0)
print(child.pid, usage.ru_maxrss * 1024, flush=True)
"""


def test_peak_memory_is_the_programs_own_not_its_parents(sidecar, grpc_receiver, test_python):
    """getrusage's ru_maxrss of an exec'd child counts the image it replaced: the size of its parent.
    The span's peak is that of the program it ran."""
    sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
    parent = subprocess.run([test_python, "-c", BIG_PARENT], capture_output=True, text=True, timeout=60)
    child_pid, child_ru_maxrss = map(int, parent.stdout.split())
    assert child_ru_maxrss >= 300 << 20
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child_pid))
    assert 1 << 20 < span.attributes["otelproc.memory.peak"] < 100 << 20


def test_oom_kill_in_a_memory_cgroup(sidecar, grpc_receiver, test_python):
    cgroup = MEMORY_V1 / f"otelproc-test-{os.getpid()}"
    cgroup.mkdir()
    try:
        (cgroup / "memory.limit_in_bytes").write_text(str(64 << 20))
        sidecar(*MATCH_TEST, endpoint=grpc_receiver.endpoint)
        child = subprocess.Popen([test_python, "-c", EAT_MEMORY, str(cgroup)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "inside"
        assert child.wait(60) == -signal.SIGKILL
    finally:
        remove_cgroup(cgroup)
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    a = span.attributes
    assert span.status == "ERROR"
    assert span.status_message == f"killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup {cgroup.name})"
    assert a["error.type"] == "OOMKilled"
    assert a["otelproc.exit.sender"] == "oom-killer"
    assert a["otelproc.oom.constraint"] == "memcg" and a["otelproc.oom.cgroup"] == cgroup.name
    # The figures the kernel logged for its kill (anon-rss is above the limit: what the
    # interpreter used before it joined the cgroup stays charged where it was).
    logged = kernel_oom_report(child.pid)
    assert logged["oom_memcg"] == f"/{cgroup.name}"
    assert a["otelproc.oom.anon_rss"] == logged["anon-rss"] >= 48 << 20
    assert a["otelproc.oom.total_vm"] == logged["total-vm"]
    assert a["otelproc.oom.file_rss"] == logged["file-rss"]
    assert a["otelproc.oom.shmem_rss"] == logged["shmem-rss"]
    assert a["otelproc.oom.pgtables"] == logged["pgtables"]
    assert a["otelproc.oom.score_adj"] == logged["oom_score_adj"] == 0


def kernel_oom_report(pid: int) -> dict[str, object]:
    """The OOM killer's two log lines about a victim: its constraint line and its figures (in bytes)."""
    log = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout.splitlines()
    (constraint,) = [line for line in log if "oom-kill:" in line and f",pid={pid}," in line]
    (killed,) = [line for line in log if f"Killed process {pid} (" in line]
    report: dict[str, object] = dict(kv.split("=", 1) for kv in constraint.split("oom-kill:", 1)[1].split(","))
    for name, value in re.findall(r"([a-z_-]+):(-?\d+)", killed.split(")", 1)[1]):
        report[name] = int(value) * 1024 if name != "oom_score_adj" else int(value)
    return report


def test_a_kernel_without_a_tracepoint_still_runs(kernel_events, monkeypatch):
    """On a kernel without the tracepoint (older ones lack mark_victim's task argument) the program
    is left out, said once, and processes are still followed."""
    missing = loader.OptionalProgram("otelproc_oom", "no_such_tracepoint", None, "OOM kills")
    monkeypatch.setattr(loader, "OPTIONAL_PROGRAMS", (missing,))
    events = kernel_events()
    assert events.probe.left_out == [missing]
    assert missing.warning() == "this kernel has no usable tracepoint no_such_tracepoint: spans will not say OOM kills"
    child = subprocess.Popen([PYTHON, "-c", "import sys; sys.exit(7)"])
    assert child.wait() == 7
    assert events.wait_exit(child.pid).exit_code == 7


IGNORES_ONE_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, lambda *_: print('not yet', flush=True))
print('ready', flush=True)
time.sleep(60)
"""


def test_signals_seen_before_a_restart_stay_on_the_span(sidecar, grpc_receiver, test_python, tmp_path):
    args = (*MATCH_TEST, "--state-file", str(tmp_path / "state.json"))
    first = sidecar(*args, endpoint=grpc_receiver.endpoint)
    child = subprocess.Popen([test_python, "-c", IGNORES_ONE_SIGTERM], stdout=subprocess.PIPE, text=True)
    wait_ready(child)
    child.terminate()
    assert child.stdout.readline().strip() == "not yet"
    time.sleep(0.5)  # the signal record is read within a poll
    assert first.stop() == 0  # writes the state file
    sidecar(*args, endpoint=grpc_receiver.endpoint)
    killer = subprocess.Popen(["/bin/kill", "-KILL", str(child.pid)])
    assert killer.wait() == 0 and child.wait() == -signal.SIGKILL
    (span,) = grpc_receiver.wait_for(lambda _: grpc_receiver.of_pid(child.pid))
    assert span.status_message == f"killed by SIGKILL from pid {killer.pid} (kill)"
    assert [
        (name, attrs["otelproc.signal.name"], attrs["otelproc.signal.sender_pid"])
        for name, _, attrs in span.events
        if name == "signal"
    ] == [("signal", "SIGTERM", os.getpid())]
