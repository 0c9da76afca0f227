"""What a stop says of the spans it could not deliver: counted in words, kept beside the state file."""

from __future__ import annotations

from collections import Counter

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otelproc.otel import unsent


def span(n: int) -> ReadableSpan:
    return ReadableSpan(name=f"s{n}", context=SpanContext(1, n + 1, False))


def kept_words(tmp_path, spans: int) -> str:
    path = tmp_path / unsent.FILE_NAME
    outbox = unsent.Unsent(path, unsent.Backlog(path, Counter()))
    outbox.stopping = True
    outbox.keep([span(n) for n in range(spans)])
    words, dropped = outbox.write()
    assert dropped == 0
    assert sum(unsent.spans_in(r) for r in unsent.read_requests(path)) == spans
    return words


def test_one_span_kept_is_one_span(tmp_path):
    assert (
        kept_words(tmp_path, 1)
        == f"1 span not delivered in time kept in {tmp_path / unsent.FILE_NAME} for the next start"
    )


def test_spans_kept_are_counted(tmp_path):
    assert kept_words(tmp_path, 3).startswith("3 spans not delivered in time kept in ")
