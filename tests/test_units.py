"""The pure parts, without the kernel: settings, ids, the tracker's table, span contents."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import signal
import types
import typing

import pytest

from conftest import REPO
from otelproc import config, matching
from otelproc.kernel import record
from otelproc.kernel.probe import match_key
from otelproc.matching import EXE_NAME_MAX
from otelproc.config import ConfigError
from otelproc.kernel.decoder import cpu_split
from otelproc.model import USAGE_GROUPS, OomKill, ProcessEvent, SignalSent, Usage, parse_otel_env
from otelproc.identity import ProcessIdentity, fresh_carrier, place
from otelproc.model import EventKind
from otelproc.signals import DEFAULT_CLEAN, code_name, parse_signal_set
from otelproc.otel.spans import CLEAN_SIGNALS, SpanBuilder, container_id, exit_status, parse_resource_attributes
from otelproc.sidecar.tracker import MAX_SIGNALS, Ended, Tracker, program_name

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def event(kind: str, pid: int, ticks: int, ppid: int = 1, **kw: object) -> ProcessEvent:
    base = dict(
        kind=EventKind(kind), time=1_000 + ticks, pid=pid, ppid=ppid, vpid=pid, pidns=4026531836, tid=pid, uid=0, gid=0,
        comm="python3", exe="/usr/bin/python3", argv=("python3", "app.py"), start_time=ticks, start_ticks=ticks,
        exit_code=None, signal=None, core_dumped=False, cgroup_id=0, cgroup="", truncated=(), untracked=False,
        otel_env=(),
    )
    base.update(kw)
    return ProcessEvent(**base)


# settings


def resolve(argv: list[str], env: dict[str, str]) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, "run")
    return config.resolve("run", parser.parse_args(argv), env)


def test_flag_beats_environment_beats_default():
    assert resolve([], {}).service_name == "otelproc"
    assert resolve([], {"OTELPROC_SERVICE_NAME": "env"}).service_name == "env"
    settings = resolve(["--service-name", "flag"], {"OTELPROC_SERVICE_NAME": "env"})
    assert settings.service_name == "flag" and settings.sources["service_name"] == "flag"


@pytest.mark.parametrize(
    "argv, env, where",
    [
        (["--ring-buffer-size", "5000"], {}, "--ring-buffer-size"),
        ([], {"OTELPROC_MAX_PROCESSES": "-1"}, "OTELPROC_MAX_PROCESSES"),
        (["--start-span-delay", "soon"], {}, "--start-span-delay"),
        ([], {"OTELPROC_ADOPT": "maybe"}, "OTELPROC_ADOPT"),
        (["--scope", "cgroup=/nonexistent"], {}, "--scope"),
    ],
)
def test_bad_settings_name_their_source(argv, env, where):
    with pytest.raises(ConfigError, match=where):
        resolve(argv, env)


def fits(value: object, hint: object) -> bool:
    """Whether a value is of a type hint: unions, Optional, tuple[X, ...], frozenset[X] and plain classes."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if typing.get_origin(hint) in (tuple, frozenset):
        return isinstance(value, typing.get_origin(hint)) and all(fits(v, args[0]) for v in value)
    return value is None if hint is type(None) else isinstance(value, hint)


def test_settings_are_typed_one_field_per_option():
    hints = typing.get_type_hints(config.Settings)
    settings = resolve(["--health-port", "9464", "--duration", "2.5"], {"OTELPROC_STATE_FILE": ""})
    for option in config.OPTIONS:
        assert fits(getattr(settings, option.name), hints[option.name]), option.name
        assert fits(option.parse(option.default), hints[option.name]), f"default of {option.name}"
    assert (settings.health_port, settings.duration, settings.state_file) == (9464, 2.5, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.adopt = False  # type: ignore[misc]


def test_an_option_without_a_settings_field_is_refused(monkeypatch):
    extra = config.Option("spool_dir", "", str, "somewhere", ("run",))
    monkeypatch.setattr(config, "OPTIONS", (*config.OPTIONS, extra))
    with pytest.raises(TypeError, match="spool_dir"):
        config._check_settings_fields()


def test_match_list_parsing():
    rules = config.parse_match("python, python3.*,uvicorn")
    assert [(r.name, r.prefix) for r in rules] == [("python", False), ("python3.", True), ("uvicorn", False)]
    assert match_key(rules[0])[4:11] == b"python\0"  # exact names keep their NUL, so python3 does not match
    assert match_key(rules[1])[:4] == (8 * len("python3.")).to_bytes(4, "little")


@pytest.mark.parametrize(
    "text, message",
    [
        ("python,", "empty name"),
        ("py*thon", "only one trailing *"),
        ("/usr/bin/python3", "no '/'"),
        ("p" * (EXE_NAME_MAX + 1), "longer than"),
    ],
)
def test_bad_match_lists_say_why(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse_match(text)


def test_the_longest_name_fits_the_kernel_key_with_its_terminator():
    (rule,) = config.parse_match("p" * EXE_NAME_MAX)
    assert len(match_key(rule)) == record.EXE_NAME_KEY.size and match_key(rule).endswith(b"p\0\0")


@pytest.mark.parametrize(
    "exe_name, python",
    [
        ("python", True), ("python3", True), ("python3.13", True), ("python3.13t", True), ("python3.11-dbg", True),
        ("python2.7", True), ("pypy3.10", True), ("pypy", True), ("graalpy", True),
        ("bash", False), ("uvicorn", False), ("celery", False), ("uwsgi", False), ("env", False), (None, False),
    ],
)
def test_default_list_is_the_python_interpreters(exe_name, python):
    assert matching.any_match(config.parse_match(config.DEFAULT_MATCH), exe_name) is python
    assert matching.is_python(exe_name) is python


def test_documented_settings_table_matches_the_code():
    assert config.markdown_table() in (REPO / "docs" / "configuration.md").read_text()


# identity


def test_ids_follow_the_documented_scheme():
    ident = ProcessIdentity("boot", 4026531836, 42, 1234)
    key = b"boot/4026531836/42/1234"
    assert ident.span_id() == int.from_bytes(hashlib.sha256(b"otelproc span " + key).digest()[:8], "big")
    assert ident.root_trace_id() == int.from_bytes(hashlib.sha256(b"otelproc trace " + key).digest()[:16], "big")
    assert ident.start_span_id() != ident.span_id()


def test_placement_rules():
    me = ProcessIdentity("b", 1, 2, 3)
    parent = place(ProcessIdentity("b", 1, 1, 1), None, None)
    assert parent.parent_span_id is None and parent.trace_id == ProcessIdentity("b", 1, 1, 1).root_trace_id()
    under_parent = place(me, None, parent)
    assert (under_parent.trace_id, under_parent.parent_span_id) == (parent.trace_id, parent.span_id)
    carrier, malformed = fresh_carrier(TP, "k=v", None)
    carried = place(me, carrier, parent)
    assert not malformed
    assert carried.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and carried.parent_span_id == 0xB7AD6B7169203331
    assert carried.parent_context().trace_state.get("k") == "v"
    assert fresh_carrier(TP, None, TP) == (None, False)  # the parent had the same carrier: the tree wins
    carrier, malformed = fresh_carrier("00-nothex-01", None, None)
    assert carrier is None and malformed
    assert place(me, carrier, None).trace_id == me.root_trace_id()


# tracker


def test_reused_pid_is_two_processes():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 100, ticks=5))
    tracker.handle(event("exec", 100, ticks=9))  # the first one's exit was missed
    assert set(tracker.processes) == {(100, 9)}
    assert [p.key for p in tracker.superseded] == [(100, 5)]
    ended = tracker.handle(event("exit", 100, ticks=9, exit_code=0))
    assert ended.process.key == (100, 9) and len(tracker) == 0


def test_full_table_evicts_oldest_and_still_ends_its_span():
    tracker = Tracker(max_processes=2, started_span_after_ns=0)
    for pid in (1, 2, 3):
        tracker.handle(event("exec", pid, ticks=pid))
    assert tracker.stats.drops["table_full"] == 1 and (1, 1) not in tracker.processes
    ended = tracker.handle(event("exit", 1, ticks=1, exit_code=2))
    assert ended.process.origin == "exit" and ended.exit_code == 2
    assert tracker.stats.reconciled["exec_missed"] == 1


def test_exec_again_keeps_the_span_and_records_the_exec():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 7, ticks=1, comm="uvicorn", argv=("/usr/bin/env", "python3", "/bin/uvicorn")))
    tracker.handle(event("exec", 7, ticks=1, time=5_000, argv=("python3", "/bin/uvicorn", "app:app")))
    (process,) = tracker.processes.values()
    assert process.start_time == 1_001 and [e.time for e in process.execs] == [5_000]
    assert process.program == "uvicorn"


def test_forked_child_inherits_program_and_parent():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1, otel_env=(("OTEL_SERVICE_NAME", "svc"),)))
    tracker.handle(event("fork", 11, ticks=2, ppid=10, exe=None, argv=None))
    child = tracker.processes[(11, 2)]
    parent = tracker.processes[(10, 1)]
    assert child.argv == parent.argv and child.otel_env == {"OTEL_SERVICE_NAME": "svc"}
    assert child.link.trace_id == parent.link.trace_id and child.link.parent_span_id == parent.link.span_id


def test_started_spans_come_due_once():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1))
    assert [p.pid for p in tracker.due_started_spans(2**62)] == [10]
    assert list(tracker.due_started_spans(2**62)) == []


def test_an_exec_keeps_the_owner_its_fork_gave_it():
    """A child gone before its exec record is read (pid 4000000 is past pid_max) in a container: its
    owner is the one its fork gave it, not lost to a /proc look that finds nothing."""
    from otelproc.sidecar.owners import Owners

    tracker = Tracker(max_processes=10, started_span_after_ns=0, owners=Owners())
    container = dict(pidns=4026532999, uid=1000)
    tracker.handle(event("exec", 4_000_000, ticks=1, **container))
    parent = tracker.processes[(4_000_000, 1)]
    assert parent.owner is None  # gone, and not in otelproc's pid namespace: nobody to ask
    parent.owner = "app"  # as the sidecar found it while the parent ran
    tracker.handle(event("fork", 4_000_001, ticks=2, ppid=4_000_000, **container))
    tracker.handle(event("exec", 4_000_001, ticks=2, ppid=4_000_000, **container))
    assert tracker.processes[(4_000_001, 2)].owner == "app"
    tracker.handle(event("exec", 4_000_001, ticks=2, ppid=4_000_000, pidns=4026532999, uid=0))  # a new uid
    assert tracker.processes[(4_000_001, 2)].owner is None


def test_signals_kept_per_process_are_bounded_and_become_span_events():
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1))
    for n in range(MAX_SIGNALS + 4):
        sent = SignalSent(2_000 + n, signal.SIGHUP, 0, False, 500 + n, "sender")
        tracker.handle(event("signal", 10, ticks=1, sent=sent))
    tracker.handle(event("signal", 99, ticks=1, sent=sent))  # not a tracked process: ignored
    ended = tracker.handle(event("exit", 10, ticks=1, signal=signal.SIGKILL))
    assert ended.process.signals_dropped == 4
    assert [s.sender_pid for s in ended.process.signals] == list(range(504, 504 + MAX_SIGNALS))
    span = SpanBuilder("default", {"host.name": "h"}).lifetime(ended)
    assert span.attributes["otelproc.signals.dropped"] == 4
    signal_events = [e for e in span.events if e.name == "signal"]
    assert len(signal_events) == MAX_SIGNALS
    assert dict(signal_events[0].attributes) == {
        "otelproc.signal.name": "SIGHUP", "otelproc.signal.code": "SI_USER", "otelproc.signal.sender": "process",
        "otelproc.signal.sender_pid": 504, "otelproc.signal.sender_name": "sender",
    }


@pytest.mark.parametrize(
    "exe, argv, parent, name",
    [
        ("/usr/bin/python3.11", ("python3", "-m", "http.server", "8000"), None, "http.server"),
        ("/usr/bin/python3", ("python3", "-u", "/srv/app.py"), None, "app.py"),
        ("/usr/bin/python3", ("python3", "-X", "dev", "tool.py"), None, "tool.py"),
        ("/usr/bin/python3", ("python3", "-c", "pass"), None, "python3 -c"),
        ("/usr/bin/python3", ("python3", "-c", "spawn_main()", "--multiprocessing-fork"), "uvicorn", "uvicorn worker"),
        ("/venv/bin/python", ("/venv/bin/python", "/venv/bin/celery", "-A", "proj", "worker"), None, "celery"),
        ("/usr/bin/python3", ("/usr/bin/python3", "-u", "./manage.py", "runserver"), None, "manage.py"),
        ("/opt/pypy/bin/pypy3.10", ("pypy3.10", "-m", "gunicorn", "app:app"), None, "gunicorn"),
        ("/bin/bash", ("bash", "-c", "x"), None, "bash"),
        (None, None, None, "comm"),
    ],
)
def test_program_names(exe, argv, parent, name):
    assert program_name(exe, argv, "comm", parent) == name


# spans


def _ended(code, sig, core=False, signals=(), oom=None):
    process = types.SimpleNamespace(pid=100, signals=list(signals), oom=oom)
    return Ended(process, 0, code, sig, core)


def _sent(sig, sender_pid=0, comm="", code=0, from_kernel=False):
    return SignalSent(0, sig, code, from_kernel, sender_pid, comm)


def test_exit_status_descriptions():
    def status(code, sig, core=False, signals=(), oom=None, clean=CLEAN_SIGNALS):
        s, err, reason = exit_status(_ended(code, sig, core, signals, oom), clean)
        assert s.status_code.name != "ERROR" or s.description == reason
        return s.status_code.name, reason, err

    assert status(0, None) == ("OK", "exit status 0", None)
    assert status(3, None) == ("ERROR", "exit status 3", "3")
    assert status(None, None) == ("UNSET", "ended; its exit was not seen", None)
    assert status(None, 9) == ("ERROR", "killed by SIGKILL", "SIGKILL")
    segv = [_sent(11, code=1, from_kernel=True)]
    assert status(None, 11, True, segv) == ("ERROR", "killed by SIGSEGV from the kernel (SEGV_MAPERR, core dumped)", "SIGSEGV")
    assert status(None, 11, True) == ("ERROR", "killed by SIGSEGV (core dumped)", "SIGSEGV")
    gunicorn = _sent(15, 812, "gunicorn")
    assert status(None, 15, signals=[gunicorn]) == ("OK", "stopped by SIGTERM from pid 812 (gunicorn)", None)
    # Handled, then re-raised by the process itself: the one that asked it to stop is named.
    assert status(None, 15, signals=[gunicorn, _sent(15, 100, "uvicorn", code=-6)])[1] == "stopped by SIGTERM from pid 812 (gunicorn)"
    assert status(None, 2, signals=[_sent(2, 100, "python", code=-6)])[1] == "stopped by SIGINT from itself"
    assert status(None, 15, signals=[gunicorn], clean=frozenset()) == (
        "ERROR", "killed by SIGTERM from pid 812 (gunicorn)", "SIGTERM")
    # A clean signal that dumps core (SIGQUIT is not clean; a core dump never is).
    assert status(None, 3, True)[0] == "ERROR"
    memcg = OomKill(0, True, "otp-oom", 0, 0, 0, 0, 0, 0)
    assert status(None, 9, signals=[_sent(9, code=0x80, from_kernel=True)], oom=memcg) == (
        "ERROR", "killed by SIGKILL from the OOM killer (memory cgroup limit, cgroup otp-oom)", "OOMKilled")
    system = memcg._replace(memcg=False, cgroup="")
    assert status(None, 9, oom=system)[1] == "killed by SIGKILL from the OOM killer (system out of memory)"


def test_clean_signals_setting():
    assert parse_signal_set(DEFAULT_CLEAN) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE}
    assert parse_signal_set("sigterm, USR1") == {signal.SIGTERM, signal.SIGUSR1}
    assert parse_signal_set("") == frozenset()
    with pytest.raises(config.ConfigError, match="'TERMINATE' is not a signal name"):
        config.parse_clean_signals("TERM,TERMINATE")


def test_si_code_names():
    assert [code_name(15, c) for c in (0, -6, -1, 0x80, -2)] == ["SI_USER", "SI_TKILL", "SI_QUEUE", "SI_KERNEL", "SI_TIMER"]
    assert code_name(signal.SIGSEGV, 2) == "SEGV_ACCERR" and code_name(signal.SIGSYS, 1) == "SYS_SECCOMP"
    assert code_name(signal.SIGSEGV, 99) == "99"


def test_cpu_time_split_like_getrusage():
    assert cpu_split(1000, 3, 1) == (750, 250)
    assert cpu_split(1000, 0, 0) == (1000, 0)  # no tick landed: all user, as the kernel does
    assert cpu_split(1000, 0, 5) == (0, 1000)


@pytest.mark.parametrize(
    "leaf, cid",
    [
        ("docker-" + "a" * 64 + ".scope", "a" * 64),
        ("cri-containerd-" + "b" * 64 + ".scope", "b" * 64),
        ("c" * 64, "c" * 64),
        ("user.slice", None),
        ("054ad49c851de8945147c9409dd4ad94", None),
    ],
)
def test_container_id_from_cgroup(leaf, cid):
    assert container_id(leaf) == cid


def test_resource_attributes_parsing_counts_malformed():
    attrs, bad = parse_resource_attributes("team=pay%2Cments, region = eu ,broken,=nokey")
    assert attrs == {"team": "pay,ments", "region": "eu"} and bad == 2


def test_resources_are_built_once_per_service():
    builder = SpanBuilder("default", {"host.name": "h"})
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 1, ticks=1, otel_env=(("OTEL_SERVICE_NAME", "a"),)))
    tracker.handle(event("exec", 2, ticks=2, otel_env=(("OTEL_SERVICE_NAME", "a"),)))
    tracker.handle(event("exec", 3, ticks=3))
    a1, a2, d = (builder.resource(p) for p in tracker.processes.values())
    assert a1 is a2 and a1.attributes["service.name"] == "a" and d.attributes["service.name"] == "default"


def _lifetime(builder: SpanBuilder, cgroup_path: str | None = None, **exec_fields: object) -> dict[str, object]:
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 10, ticks=1, **exec_fields))
    used = Usage(3_000_000, 1_000_000, 9 << 20, 1_150, 0, 2, 3, 0, 4096)
    ended = tracker.handle(event("exit", 10, ticks=1, exit_code=0, usage=used, comm=exec_fields.get("comm", "python3")))
    return dict(builder.lifetime(ended, cgroup_path).attributes)


def test_usage_groups_say_what_a_span_carries():
    default = _lifetime(SpanBuilder("svc", {}))
    assert {k for k in default if k.startswith(("process.cpu", "otelproc.memory", "process.paging",
                                                   "process.context", "process.disk"))} == {
        "process.cpu.time.user", "process.cpu.time.system", "otelproc.memory.peak"}
    assert default["process.cpu.time.user"] == 0.003 and default["otelproc.memory.peak"] == 9 << 20
    everything = _lifetime(SpanBuilder("svc", {}, usage=frozenset(USAGE_GROUPS)))
    assert everything["process.paging.faults.minor"] == 1_150 and everything["process.disk.io.write"] == 4096
    assert everything["process.context_switches.involuntary"] == 3
    assert "process.paging.faults.major" not in everything and "process.disk.io.read" not in everything  # zero
    io_only = _lifetime(SpanBuilder("svc", {}, usage=frozenset({"io"})))
    assert "process.cpu.time.user" not in io_only and io_only["process.disk.io.write"] == 4096


def test_usage_setting():
    assert resolve([], {}).usage == {"cpu", "memory"}
    assert resolve(["--usage", "cpu, io"], {}).usage == {"cpu", "io"}
    assert resolve([], {"OTELPROC_USAGE": ""}).usage == frozenset()
    with pytest.raises(ConfigError, match="disk: not a usage group; choose from cpu, memory, faults, switches, io"):
        resolve(["--usage", "cpu,disk"], {})


def test_attributes_that_would_repeat_another_are_left_out():
    builder = SpanBuilder("svc", {})
    plain = _lifetime(builder, comm="python3", exe="/usr/bin/python3")
    assert "process.vpid" not in plain and "otelproc.comm" not in plain and "process.exit.time" not in plain
    cut = _lifetime(builder, comm="python-otp12345", exe="/venv/bin/python-otp1234567")  # the kernel's 15 bytes
    assert "otelproc.comm" not in cut
    contained = _lifetime(builder, vpid=7, comm="python3", exe="/usr/bin/python3.11", cgroup="app.service")
    assert contained["process.vpid"] == 7 and contained["process.pid"] == 10
    assert contained["otelproc.comm"] == "python3" and contained["otelproc.cgroup"] == "app.service"
    with_path = _lifetime(builder, cgroup="app.service", cgroup_path="0::/system.slice/app.service")
    assert "otelproc.cgroup" not in with_path and with_path["process.linux.cgroup"] == "0::/system.slice/app.service"
    other_leaf = _lifetime(builder, cgroup="mem-7", cgroup_path="0::/system.slice/app.service")  # a v1 memory cgroup
    assert other_leaf["otelproc.cgroup"] == "mem-7"


# decoder


def test_only_allowlisted_variables_are_kept():
    env = b"OTEL_SERVICE_NAME=first\0XOTEL_RESOURCE_ATTRIBUTES=no\0SECRET=x\0TRACEPARENT=tp\0TRACESTATE=\xff"
    assert dict(parse_otel_env(env)) == {"OTEL_SERVICE_NAME": "first", "TRACEPARENT": "tp", "TRACESTATE": "\\xff"}


# secrets


@pytest.mark.parametrize(
    "argv, redacted",
    [
        (["app", "--password=hunter2", "--verbose"], ["app", "--password=***", "--verbose"]),
        (["app", "--db-token", "abc", "next"], ["app", "--db-token", "***", "next"]),
        (["app", "-secret=x"], ["app", "-secret=***"]),
        (["psql", "postgres://user:pa55@db:5432/x"], ["psql", "postgres://user:***@db:5432/x"]),
        (["env", "AWS_SECRET_ACCESS_KEY=abc", "HOME=/root"], ["env", "AWS_SECRET_ACCESS_KEY=***", "HOME=/root"]),
        (["/usr/bin/mysql", "-uroot", "-phunter2", "db"], ["/usr/bin/mysql", "-uroot", "-p***", "db"]),
        (["mysql", "-p", "db"], ["mysql", "-p", "db"]),  # -p alone prompts; db is a database name
        (["sshpass", "-p", "hunter2", "ssh", "h"], ["sshpass", "-p", "***", "ssh", "h"]),
        (["redis-cli", "-a", "hunter2", "ping"], ["redis-cli", "-a", "***", "ping"]),
        (["python3", "-m", "uvicorn", "app:app", "--port", "80"], ["python3", "-m", "uvicorn", "app:app", "--port", "80"]),
        (["python3", "-c", "print('token')"], ["python3", "-c", "print('token')"]),
    ],
)
def test_redaction(argv, redacted):
    from otelproc.redact import redact_argv

    assert redact_argv(argv) == redacted


# adoption races: a process exits, or its pid is reused, between two reads of /proc.
# The real race cannot be timed from a test, so the second read is made to see it.


def test_adoption_skips_a_process_that_exits_while_read(monkeypatch):
    import subprocess
    import sys

    from otelproc import procfs
    from otelproc.sidecar import adoption
    from otelproc.clock import BootClock

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    real_environ = procfs.environ

    def exits_meanwhile(pid: int) -> bytes:
        child.kill()
        child.wait()
        return real_environ(pid)

    monkeypatch.setattr(procfs, "environ", exits_meanwhile)
    stats = adoption.AdoptionStats()
    assert adoption.snapshot_or_none(child.pid, BootClock(), None, stats) is None
    assert stats.vanished == 1


def test_adoption_skips_a_pid_reused_while_read(monkeypatch):
    import os

    from otelproc import procfs
    from otelproc.sidecar import adoption
    from otelproc.clock import BootClock

    real_stat = procfs.stat
    reads = []

    def reused(pid: int) -> procfs.Stat:
        stat = real_stat(pid)
        reads.append(pid)
        return stat._replace(start_ticks=stat.start_ticks + (1 if len(reads) > 1 else 0))  # the second read finds a newer process

    monkeypatch.setattr(procfs, "stat", reused)
    stats = adoption.AdoptionStats()
    assert adoption.snapshot_or_none(os.getpid(), BootClock(), None, stats) is None
    assert stats.vanished == 1 and len(reads) == 2
