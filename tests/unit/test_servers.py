"""The server-model rules: how a worker's span is named, and which of its spans is the first of its trace."""

from __future__ import annotations

import pytest

from otelproc.servers import first_in_process, program_name


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


def test_first_span_in_a_process():
    assert first_in_process(None, False, set())  # no parent: a root
    assert first_in_process(7, True, {7})  # a remote parent: a request that came in
    assert first_in_process(7, False, {8})  # a local parent this process did not start: inherited at fork
    assert not first_in_process(7, False, {7})  # a child of a span of its own
