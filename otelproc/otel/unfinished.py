"""The spans a dead process left in its span region (otelproc/region.py), as the process would have
exported them.

A span still in flight when the process died ends at its death, with status ERROR and the
sentence of the process span ("killed by SIGKILL from the OOM killer ..."), error.type as
there, and a link to the process span: the request that died with its worker sits in its
caller's trace, and says what ended it. A span that had ended and waited for export goes
out as it ended. Either goes under the resource the process exported under (the region
keeps it), with the instrumentation scope that made it. Attribute values are redacted as
command lines are: a region is the process's own writing, not to be trusted further.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import AttributeValue

from otelproc.redact import redact_text
from otelproc.region import ABORTED, ENDED, STARTED, STATUS_UNSET, RecordedSpan, Region

INFLIGHT_ATTRIBUTE = "otelproc.span.ended_by"  # "process death": otelproc ended it, at the death
LINK_ATTRIBUTES = {"otelproc.link": "process"}
KILLED_LINK_ATTRIBUTES = {"otelproc.link": "died_in_flight"}  # on the process span, to each such span


def _trace_state(header: str) -> TraceState | None:
    if not header:
        return None
    try:
        return TraceState.from_header([header])
    except ValueError:
        return None


def _redacted(attributes: Mapping[str, AttributeValue], redact: bool) -> dict[str, AttributeValue]:
    if not redact:
        return dict(attributes)
    out: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if isinstance(value, str):
            out[key] = redact_text(value)
        elif isinstance(value, list):
            out[key] = [redact_text(v) if isinstance(v, str) else v for v in value]
        else:
            out[key] = value
    return out


def unfinished_spans(
    left: Region,
    died_in_flight: bool,
    dying_since: int | None,
    death_ns: int,
    status: Status,
    error_type: str | None,
    process_span: SpanContext,
    fallback_resource: Resource,
    redact: bool = True,
) -> tuple[list[ReadableSpan], list[SpanContext]]:
    """The region's spans to export, and the contexts of those that died with the process (for the
    process span's links to them: in flight, or ended by its server's abort). died_in_flight: the
    process died, rather than ended, with spans started and not ended (a kill, a fault, a server's
    abort); after a clean exit those were never going to end, and only the ended ones go out.
    dying_since: when the process, which died of an error, was first asked to end (Unix ns): a span
    that ended after that with no status of its own ended as the process came down around it (a pool
    process's task unwound by its master's SIGTERM before the SIGKILL), and says so as those in flight."""
    resource = Resource(left.resource) if left.resource else fallback_resource
    spans: list[ReadableSpan] = []
    killed: list[SpanContext] = []
    for recorded in left.spans:
        if not recorded.sampled:
            continue
        if recorded.state == ABORTED:  # the process exported it itself, as its server aborted it
            killed.append(SpanContext(recorded.trace_id, recorded.span_id, False, TraceFlags(TraceFlags.SAMPLED)))
            continue
        if recorded.state == STARTED and not died_in_flight:
            continue
        ended_as_it_died = recorded.state == ENDED and dying_since is not None and recorded.end_ns >= dying_since
        dying = recorded.state == STARTED or (ended_as_it_died and recorded.status == STATUS_UNSET)
        span = _span(recorded, dying, death_ns, status, error_type, process_span, resource, redact)
        spans.append(span)
        if dying or ended_as_it_died:
            killed.append(span.context)  # type: ignore[arg-type]
    return spans, killed


def _span(
    recorded: RecordedSpan,
    dying: bool,
    death_ns: int,
    status: Status,
    error_type: str | None,
    process_span: SpanContext,
    resource: Resource,
    redact: bool,
) -> ReadableSpan:
    flags = TraceFlags(TraceFlags.SAMPLED)
    trace_state = _trace_state(recorded.trace_state)
    context = SpanContext(recorded.trace_id, recorded.span_id, False, flags, trace_state)
    parent = None
    if recorded.parent_span_id:
        parent = SpanContext(recorded.trace_id, recorded.parent_span_id, recorded.remote_parent, flags, trace_state)
    attributes = _redacted(recorded.attributes, redact)
    links: Sequence[Link] = ()
    # As the app linked it (FLAG_LINKED); a helper from before that flag (same region version) wrote
    # none, and linked the spans without a parent or with a remote one.
    if recorded.linked or parent is None or recorded.remote_parent:
        links = (Link(process_span, LINK_ATTRIBUTES),)
    end = recorded.end_ns if recorded.state == ENDED else max(death_ns, recorded.start_ns)
    span_status = Status(StatusCode(recorded.status), recorded.status_description or None)
    if dying:
        span_status = status
        attributes[INFLIGHT_ATTRIBUTE] = "process death"
        if error_type:
            attributes["error.type"] = error_type
    return ReadableSpan(
        name=recorded.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        links=links,
        kind=SpanKind(recorded.kind),
        status=span_status,
        start_time=recorded.start_ns,
        end_time=end,
        instrumentation_scope=InstrumentationScope(recorded.scope, recorded.scope_version or None),
    )


def links_to_the_dead(killed: Sequence[SpanContext]) -> list[Link]:
    """The process span's links to each span that died in flight with it: one click from the death
    to the request it took."""
    return [Link(context, KILLED_LINK_ATTRIBUTES) for context in killed]
