"""The app-side helper's links: "am I tracked?", run in real processes, and the link each request span gets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelproc.app import links
from support import PYTHON, REPO


def write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_the_app_side_does_not_count_a_shim_as_tracked(test_python, tmp_path):
    """The helper's "am I tracked?" is the sidecar's rule: a bash script named like the match list is not
    a tracked parent; a process that loaded a matching interpreter is."""
    name = Path(test_python).name  # the session's own, so that no sidecar of another session tracks it
    shims = tmp_path / "shims"
    shims.mkdir()
    code = "import otelproc.app as a; print(a.process_link() is not None, flush=True)"
    write_script(shims / name, f"#!/bin/bash\n{PYTHON} -c '{code}'\n")  # python as the shim's child
    env = {
        **os.environ,
        "OTELPROC_MATCH": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    under_shim = subprocess.run([str(shims / name)], env=env, capture_output=True, text=True, timeout=30)
    assert under_shim.stdout.strip() == "False", under_shim.stderr
    parent = f"import subprocess; subprocess.run([{PYTHON!r}, '-c', {code!r}])"
    under_python = subprocess.run([test_python, "-c", parent], env=env, capture_output=True, text=True, timeout=30)
    assert under_python.stdout.strip() == "True", under_python.stderr


def test_each_local_root_span_links_to_its_process_span_and_its_children_do_not(monkeypatch):
    """Every request span (a local root) carries one link to this process's process span, with the link's
    attribute, and the process key; a span under it in this process carries neither."""
    monkeypatch.setenv("OTELPROC_ALL", "true")  # this process is tracked: it has a process span
    monkeypatch.setattr(links, "_own", (-1, "", None))
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    links.install(provider)
    try:
        tracer = provider.get_tracer("shop")
        for path in ("/a", "/b"):
            with tracer.start_as_current_span(f"GET {path}"):
                with tracer.start_as_current_span(f"query {path}"):
                    pass
    finally:
        links.uninstall()
    place = links.process_link()
    assert place is not None
    spans = {s.name: s for s in exported.get_finished_spans()}
    for path in ("/a", "/b"):
        (link,) = spans[f"GET {path}"].links
        assert (link.context.trace_id, link.context.span_id) == (place.trace_id, place.span_id)
        assert dict(link.attributes) == {"otelproc.link": "process"}
        assert spans[f"GET {path}"].attributes["otelproc.process.key"] == links.process_key()
        assert not spans[f"query {path}"].links and "otelproc.process.key" not in spans[f"query {path}"].attributes
