"""The documentation says what the code does: the span attribute reference and the links.

The reference tables in docs/ are read the way a person reads them and compared with
what the code really produces: spans built by otelproc/spans.py from representative
lifetimes. (The settings table is checked against OPTIONS in test_units.py.)
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from conftest import REPO
from otelproc.model import USAGE_GROUPS, OomKill, ProcessEvent, SignalSent, Usage
from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.sidecar.tracker import MAX_SIGNALS, Ended, Tracker
from test_units import event

DOCS = REPO / "docs"
CONTAINER = "a3f0" * 16
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def table_rows(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading` (up to the next heading), header row dropped."""
    lines = path.read_text().splitlines()
    start = lines.index(heading)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"{path.name}: no table under {heading!r}"
    return rows[2:]


def documented_keys(rows: list[list[str]]) -> set[str]:
    return {m.group(1) for row in rows for m in [re.fullmatch(r"`([a-z_.]+)`", row[0])] if m}


def representative_spans() -> list:
    """Lifetime and 'started' spans of processes that end every way the kernel reports, plus one unseen end;
    each with every usage group, the ones in containers with their own pid and a name they gave themselves."""
    builder = SpanBuilder("svc", host_attributes(), usage=frozenset(USAGE_GROUPS))
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    spans = []
    used = Usage(1_500_000, 500_000, 64 << 20, 1_200, 3, 10, 4, 4096, 8192)
    memcg = OomKill(9_800, True, "app.service", 80 << 20, 70 << 20, 6 << 20, 0, 200 << 10, 0)

    def stopped_by_gunicorn(pid: int) -> list[ProcessEvent]:
        """More signals than a span keeps; the last a re-raise of the one that asked it to stop."""
        asked = [SignalSent(9_000 + n, signal.SIGHUP, 0, False, 812, "gunicorn") for n in range(MAX_SIGNALS)]
        asked += [SignalSent(9_500, signal.SIGTERM, 0, False, 812, "gunicorn"),
                  SignalSent(9_600, signal.SIGTERM, -6, False, pid, "python3")]
        return [event("signal", pid, ticks=pid, sent=sent) for sent in asked]

    def oom_killed(pid: int) -> list[ProcessEvent]:
        return [event("signal", pid, ticks=pid, sent=SignalSent(9_700, signal.SIGKILL, 0x80, True, 0, "")),
                event("oom", pid, ticks=pid, oom=memcg)]

    cases = [
        (dict(exit_code=3, usage=used), None),
        (dict(exit_code=None, signal=11, core_dumped=True, usage=used), None),
        (dict(exit_code=0, usage=used), None),
        (dict(exit_code=None, signal=signal.SIGTERM, usage=used), stopped_by_gunicorn),
        (dict(exit_code=None, signal=signal.SIGKILL, usage=used), oom_killed),
    ]
    for pid, (ending, before) in enumerate(cases, start=100):
        in_container = dict(cgroup=f"docker-{CONTAINER}.scope", truncated=("argv",), vpid=7, comm="gunicorn: work")
        tracker.handle(event("exec", pid, ticks=pid, **in_container))
        tracker.handle(event("exec", pid, ticks=pid, time=9_000, argv=("python3", "b.py"), **in_container))
        (process,) = [p for p in tracker.processes.values() if p.pid == pid]
        process.owner = "app"  # what the sidecar finds in the process's own /etc/passwd
        spans.append(builder.started(process, "0::/system.slice/app.service"))
        for kernel_event in before(pid) if before else ():
            tracker.handle(kernel_event)
        ended = tracker.handle(event("exit", pid, ticks=pid, time=10_000, **ending))
        spans.append(builder.lifetime(ended, "0::/system.slice/app.service"))
    tracker.handle(event("exec", 200, ticks=200, exe=None, argv=None))
    spans.append(builder.lifetime(Ended.unseen(tracker.forget((200, 200)), 20_000)))
    tracker.handle(event("exec", 201, ticks=201, cgroup="app.service"))  # no cgroup v2 path known
    spans.append(builder.lifetime(Ended.between(tracker.forget((201, 201)), 20_000, 30_000)))  # while down
    return spans


def test_span_attribute_reference_matches_the_spans():
    documented = documented_keys(table_rows(DOCS / "spans.md", "## Attribute reference"))
    emitted = {key for span in representative_spans() for key in span.attributes}
    assert emitted - documented == set(), "emitted by otelproc/spans.py but missing from docs/spans.md"
    assert documented - emitted == set(), "in docs/spans.md but never emitted (or no case here produces it)"


def test_resource_attribute_reference_matches_the_resources():
    rows = table_rows(DOCS / "spans.md", "Resource attributes (one resource per service):")
    builder = SpanBuilder("svc", host_attributes())
    tracker = Tracker(max_processes=10, started_span_after_ns=0)
    tracker.handle(event("exec", 1, ticks=1))
    (process,) = tracker.processes.values()
    emitted = set(builder.resource(process).attributes)
    documented = documented_keys(rows)
    assert emitted <= documented and documented - emitted <= {"host.id"}  # host.id: when /etc/machine-id exists


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    headings = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


MARKDOWN = [REPO / "README.md", REPO / "ARCHITECTURE.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_links_lead_somewhere(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in _LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: link to {target}: no such heading"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    linked = {(REPO / target.partition("#")[0]).resolve() for target in _LINK.findall(readme)}
    assert set(DOCS.glob("*.md")) - linked == set()
    assert (REPO / "README.md").stat().st_size < 15_000, "the README leads; reference goes to docs/"
