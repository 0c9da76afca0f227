"""Signal names, the kernel's si_code names, and the clean-stop setting."""

from __future__ import annotations

import signal

import pytest

from otelproc import config
from otelproc.signals import DEFAULT_CLEAN, code_name, parse_signal_set


def test_clean_signals_setting():
    assert parse_signal_set(DEFAULT_CLEAN) == {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE}
    assert parse_signal_set("sigterm, USR1") == {signal.SIGTERM, signal.SIGUSR1}
    assert parse_signal_set("") == frozenset()
    with pytest.raises(config.ConfigError, match="'TERMINATE' is not a signal name"):
        config.parse_clean_signals("TERM,TERMINATE")


def test_si_code_names():
    assert [code_name(15, c) for c in (0, -6, -1, 0x80, -2)] == [
        "SI_USER",
        "SI_TKILL",
        "SI_QUEUE",
        "SI_KERNEL",
        "SI_TIMER",
    ]
    assert code_name(signal.SIGSEGV, 2) == "SEGV_ACCERR" and code_name(signal.SIGSYS, 1) == "SYS_SECCOMP"
    assert code_name(signal.SIGSEGV, 99) == "99"
