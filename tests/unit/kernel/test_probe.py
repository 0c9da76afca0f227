"""The match list as the kernel's LPM-trie keys (probe.match_key)."""

from __future__ import annotations

from otelproc import config
from otelproc.kernel import record
from otelproc.kernel.probe import match_key
from otelproc.matching import EXE_NAME_MAX


def test_match_list_parsing():
    rules = config.parse_match("python, python3.*,uvicorn")
    assert [(r.name, r.prefix) for r in rules] == [("python", False), ("python3.", True), ("uvicorn", False)]
    assert match_key(rules[0])[4:11] == b"python\0"  # exact names keep their NUL, so python3 does not match
    assert match_key(rules[1])[:4] == (8 * len("python3.")).to_bytes(4, "little")


def test_the_longest_name_fits_the_kernel_key_with_its_terminator():
    (rule,) = config.parse_match("p" * EXE_NAME_MAX)
    assert len(match_key(rule)) == record.EXE_NAME_KEY.size and match_key(rule).endswith(b"p\0\0")
