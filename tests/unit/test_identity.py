"""Trace and span ids derived from the process key, and where a process's span goes in a trace."""

from __future__ import annotations

import hashlib

from otelproc.identity import ProcessIdentity, fresh_carrier, place


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_ids_follow_the_documented_scheme():
    ident = ProcessIdentity("boot", 4026531836, 42, 1234)
    key = b"boot/4026531836/42/1234"
    assert ident.span_id() == int.from_bytes(hashlib.sha256(b"otelproc span " + key).digest()[:8], "big")
    assert ident.root_trace_id() == int.from_bytes(hashlib.sha256(b"otelproc trace " + key).digest()[:16], "big")
    assert ident.lifetime_span_id() == int.from_bytes(hashlib.sha256(b"otelproc lifetime " + key).digest()[:8], "big")


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
