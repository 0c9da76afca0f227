"""The documentation says what the code does: the span attribute reference and the links.

The reference tables in docs/ are read the way a person reads them and compared with
what the code really produces: spans built by otelproc/otel/spans.py from representative
lifetimes (support/events.py). (The settings table is checked against OPTIONS in unit/test_config.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from otelproc.otel.spans import SpanBuilder, host_attributes
from otelproc.sidecar.tracker import Tracker
from support import REPO
from support.events import event, representative_spans


DOCS = REPO / "docs"


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
