"""The state file on its own: what a restarted otelproc resumes from, and why it refuses one."""

from __future__ import annotations

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
