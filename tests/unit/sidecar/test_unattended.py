"""The line a start says about a probe that ran unattended."""

from __future__ import annotations

import dataclasses

from otelproc import config
from otelproc.kernel.probe import LastRead
from otelproc.sidecar import unattended


def test_the_unattended_line_says_how_long_and_what_was_kept_and_missed():
    assert [unattended.duration(int(s * 1e9)) for s in (0.43, 3, 59.6, 965, 900, 7380, 3 * 86400 + 4 * 3600)] == [
        "0.4s",
        "3s",
        "1m",
        "16m05s",
        "15m",
        "2h03m",
        "3d04h",
    ]
    found = LastRead(last_read_ns=10**12, limit_ns=900 * 10**9, checked_ns=10**12 + 965 * 10**9)
    gap = unattended.figures(found, 2650, {"unattended": 9000, "ringbuf_full": 3}, {"unattended": 284})
    assert str(gap) == "the probe ran unattended for 16m05s: kept 2,650 lifetimes, missed 8,716 after the 15m limit"
    no_limit = dataclasses.replace(found, limit_ns=0)
    assert str(unattended.figures(no_limit, 1, {}, {})).endswith("kept 1 lifetime (no limit set)")
    assert unattended.figures(None, 5, {}, {}) is None, "a probe older than the limit says nothing of one"
    assert config.parse_limit_seconds("") == config.parse_limit_seconds("0") == 0.0
