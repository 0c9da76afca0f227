"""Trace and span ids derived from the process key, and where a process's span goes in a trace."""

from __future__ import annotations

import hashlib

from otelproc.identity import ProcessIdentity, TraceBound, fresh_carrier, place


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_ids_follow_the_documented_scheme():
    ident = ProcessIdentity("boot", 4026531836, 42, 1234)
    key = b"boot/4026531836/42/1234"
    assert ident.span_id() == int.from_bytes(hashlib.sha256(b"otelproc span " + key).digest()[:8], "big")
    assert ident.root_trace_id() == int.from_bytes(hashlib.sha256(b"otelproc trace " + key).digest()[:16], "big")
    assert ident.lifetime_span_id() == int.from_bytes(hashlib.sha256(b"otelproc lifetime " + key).digest()[:8], "big")


def test_placement_rules():
    me = ProcessIdentity("b", 1, 2, 3)
    parent = place(ProcessIdentity("b", 1, 1, 1), None, None, BOUND)
    assert parent.parent_span_id is None and parent.trace_id == ProcessIdentity("b", 1, 1, 1).root_trace_id()
    under_parent = place(me, None, parent, BOUND)
    assert (under_parent.trace_id, under_parent.parent_span_id) == (parent.trace_id, parent.span_id)
    carrier, malformed = fresh_carrier(TP, "k=v", None)
    carried = place(me, carrier, parent, BOUND)
    assert not malformed
    assert carried.trace_id == 0x0AF7651916CD43DD8448EB211C80319C and carried.parent_span_id == 0xB7AD6B7169203331
    assert carried.parent_context().trace_state.get("k") == "v"
    assert fresh_carrier(TP, None, TP) == (None, False)  # the parent had the same carrier: the tree wins
    carrier, malformed = fresh_carrier("00-nothex-01", None, None)
    assert carrier is None and malformed
    assert place(me, carrier, None, BOUND).trace_id == me.root_trace_id()


BOUND = TraceBound(spans=10, window_ticks=6000)  # five processes a trace, within a minute of its first


def test_a_child_joins_its_parents_trace_within_the_bound_and_starts_its_own_past_it():
    master = place(ProcessIdentity("b", 1, 100, 1000), None, None, BOUND)
    workers = [place(ProcessIdentity("b", 1, pid, 1010), None, master, BOUND) for pid in range(101, 106)]
    assert [w.trace_id == master.trace_id for w in workers] == [True, True, True, True, False]
    joined, past = workers[3], workers[4]
    assert joined.parent_span_id == master.span_id and joined.root == master.root and joined.linked is None
    assert past.trace_id == ProcessIdentity("b", 1, 105, 1010).root_trace_id() and past.parent_span_id is None
    assert (past.linked.trace_id, past.linked.span_id) == (master.trace_id, master.span_id)
    # The bound counts from the first process of the trace, not from the parent: a grandchild is counted too.
    grandchild = place(ProcessIdentity("b", 1, 105, 1010), None, joined, BOUND)
    assert grandchild.linked is not None
    # Its own children count from it.
    assert place(ProcessIdentity("b", 1, 106, 1011), None, past, BOUND).trace_id == past.trace_id


def test_a_late_child_or_a_pid_that_wrapped_round_starts_a_trace_of_its_own():
    master = place(ProcessIdentity("b", 1, 100, 1000), None, None, BOUND)
    assert place(ProcessIdentity("b", 1, 101, 1000 + 6000), None, master, BOUND).linked is not None
    assert place(ProcessIdentity("b", 1, 101, 1000 + 5999), None, master, BOUND).linked is None
    assert place(ProcessIdentity("b", 1, 7, 1001), None, master, BOUND).linked is not None  # wrapped
    carrier, _ = fresh_carrier(TP, None, None)
    carried = place(ProcessIdentity("b", 1, 900, 1001), carrier, master, BOUND)
    assert carried.linked is None and carried.root == (900, 1001)  # under a TRACEPARENT it counts from itself


def test_the_smallest_bound_puts_every_child_in_a_trace_of_its_own():
    tight = TraceBound(spans=2, window_ticks=6000)
    master = place(ProcessIdentity("b", 1, 100, 1000), None, None, tight)
    assert place(ProcessIdentity("b", 1, 101, 1000), None, master, tight).linked is not None
