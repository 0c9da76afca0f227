"""Bad usage of the `otelproc` command, as a user meets it: one line on stderr, exit status 2, no traceback.

Real subprocesses; each is refused before it needs a privilege or the kernel.
"""

from __future__ import annotations

import os

import pytest

from otelproc.matching import EXE_NAME_MAX
from support.cli import assert_one_line_error, otelproc, run_with


def test_unknown_flag_is_one_line():
    assert_one_line_error(otelproc("events", "--frobnicate"), "--frobnicate")


@pytest.mark.parametrize("bad", ["py*thon", "", "python,,uvicorn", "a" * (EXE_NAME_MAX + 1), "/usr/bin/python3"])
def test_malformed_match_list_is_one_line(bad):
    assert_one_line_error(otelproc("events", "--match", bad), "--match")


def test_malformed_match_list_from_environment():
    assert_one_line_error(otelproc("events", env={**os.environ, "OTELPROC_MATCH": "*"}), "OTELPROC_MATCH")


# (A state file otelproc cannot write is found once it holds its privileges: tests/test_cli_messages.py.)
@pytest.mark.parametrize(
    "bad",
    [
        ("--sweep-interval", "0"),
        ("--health-port", "70000"),
        ("--exporter", "zipkin"),
        ("--otlp-protocol", "thrift"),
    ],
)
def test_bad_configuration_is_one_line(bad):
    assert_one_line_error(run_with(*bad), bad[0])
