"""Which executables are Python interpreters: the default match list and the app side's rule agree."""

from __future__ import annotations

import pytest

from otelproc import config, matching


@pytest.mark.parametrize(
    "exe_name, python",
    [
        ("python", True),
        ("python3", True),
        ("python3.13", True),
        ("python3.13t", True),
        ("python3.11-dbg", True),
        ("python2.7", True),
        ("pypy3.10", True),
        ("pypy", True),
        ("graalpy", True),
        ("bash", False),
        ("uvicorn", False),
        ("celery", False),
        ("uwsgi", False),
        ("env", False),
        (None, False),
    ],
)
def test_default_list_is_the_python_interpreters(exe_name, python):
    assert matching.any_match(config.parse_match(config.DEFAULT_MATCH), exe_name) is python
    assert matching.is_python(exe_name) is python
