"""The state file on its own: what a restarted otelproc resumes from, and why it refuses one."""

from __future__ import annotations

import json
import os
import time

import pytest

from otelproc.sidecar import state


def test_state_file_names_why_it_is_not_resumed(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    state.save(path, [], True, "match=a scope=host pidns=0", {"ringbuf_full": 2})
    saved = state.load(path, "match=a scope=host pidns=0")
    assert saved.processes == [] and saved.lost == {"ringbuf_full": 2}
    later = time.time_ns() + 5_000_000_000
    os.utime(path, ns=(later, later))
    assert state.load(path, "match=a scope=host pidns=0").last_alive == later, "the mtime says when, once touched"
    with pytest.raises(state.StateFileError, match="other tracking settings"):
        state.load(path, "match=b scope=host pidns=0")
    monkeypatch.setattr(state, "host", lambda: "elsewhere")
    with pytest.raises(state.StateFileError, match="from another host"):
        state.load(path, "match=a scope=host pidns=0")
    assert state.load(tmp_path / "none.json", "x").processes == []


# One process as the previous version (state file version 2) wrote it, its 'started' span sent.
VERSION_2_PROCESS = (
    '{"pid":4242,"start_ticks":100,"pidns":0,"vpid":4242,"ppid":0,"origin":"exec","start_time":1796176366730383726,'
    '"creation_time":1796176367730383726,"uid":0,"gid":0,"comm":"","exe":"/usr/bin/python3",'
    '"argv":["python3","app.py"],"cgroup_id":0,"cgroup":"","otel_env":{},"truncated":[],'
    '"link":{"trace_id":"2d7e20b6e9ffd26297176a03927feb54","span_id":"7899f1e469899f1e","parent_span_id":null,'
    '"trace_state":null,"remote_parent":false},"parent":null,"parent_program":null,"announced":true,"execs":[],'
    '"execs_dropped":0,"owner":null,"signals":[],"signals_dropped":0,"oom":null}'
)


def test_state_file_of_the_previous_version_is_carried_on(tmp_path):
    """An upgrade loses nothing: a process whose 'started' span the previous version sent (its key
    was "announced") gets none from this one, and the file it writes next is of this version."""
    from otelproc.identity import boot_id

    path, config = tmp_path / "state.json", "match=a scope=host pidns=0"
    path.write_text(
        f'{{"version":2,"boot_id":"{boot_id()}","host":"{state.host()}","config":"{config}",'
        f'"saved_at":{time.time_ns()},"lost":{{"ringbuf_full":1}},"processes":[{VERSION_2_PROCESS}]}}'
    )
    saved = state.load(path, config)
    (process,) = saved.processes
    assert (process.pid, process.argv, process.started_span_sent) == (4242, ("python3", "app.py"), True)
    assert process.legacy_started  # that 'started' span was a child of the lifetime span: the lifetime keeps its id
    assert saved.lost == {"ringbuf_full": 1}
    state.save(path, saved.processes, True, config, saved.lost)
    written = json.loads(path.read_text())
    assert written["version"] == state.VERSION > 2 and written["processes"][0]["started_span_sent"] is True
    assert state.load(path, config).processes[0].started_span_sent is True
    assert written["processes"][0]["legacy_started"] is True and state.load(path, config).processes[0].legacy_started


def test_a_place_past_the_trace_bound_is_resumed_with_its_root_and_link(tmp_path):
    """The root a child's trace counts from and its link to its parent survive a restart; a file of version 4
    (no roots) gets the roots the processes themselves compute: a process under its parent's span shares it."""
    from otelproc.identity import TraceBound
    from otelproc.sidecar.tracker import Tracker
    from support.events import event

    tracker = Tracker(max_processes=10, started_span_after_ns=0, bound=TraceBound(spans=6, window_ticks=6000))
    tracker.handle(event("exec", 10, ticks=1))
    tracker.handle(event("fork", 11, ticks=2, ppid=10))
    tracker.handle(event("fork", 12, ticks=3, ppid=11))
    tracker.handle(event("fork", 20, ticks=4, ppid=10))  # past the bound
    before = {p.key: (p.span_place, p.linked_parent) for p in tracker.processes.values()}
    path, config = tmp_path / "state.json", "match=a scope=host pidns=0"
    state.save(path, list(tracker.processes.values()), True, config, {})
    after = {p.key: (p.span_place, p.linked_parent) for p in state.load(path, config).processes}
    assert after == before and after[(20, 4)][0].linked is not None and after[(12, 3)][0].root == (10, 1)
    data = json.loads(path.read_text())
    data["version"] = 4
    for process in data["processes"]:
        del process["link"]["root"], process["link"]["linked"], process["linked_parent"]
    path.write_text(json.dumps(data))
    roots = {p.key: p.span_place.root for p in state.load(path, config).processes}
    assert roots == {(10, 1): (10, 1), (11, 2): (10, 1), (12, 3): (10, 1), (20, 4): (20, 4)}
