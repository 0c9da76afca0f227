"""`otelproc detach` is for good: with the probe go the state file and the spans a stop kept for the next start."""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

from otelproc import cli, config
from otelproc.otel import unsent
from otelproc.sidecar import loop


def test_detach_removes_the_spans_kept_for_the_next_start(tmp_path, caplog):
    state_file = tmp_path / "state.json"
    state_file.write_text("{}")
    kept = tmp_path / unsent.FILE_NAME
    unsent.write_requests(kept, [unsent.encode([ReadableSpan(name="kept", context=SpanContext(1, 2, False))])])
    args = cli.build_parser().parse_args(["detach", "--state-file", str(state_file), "--pin-dir", ""])
    with caplog.at_level(logging.INFO, logger="otelproc"):
        assert loop.detach(config.resolve("detach", args, environ={})) == 0
    assert not state_file.exists()
    assert not kept.exists(), "a later start would send a span of the run that was detached for good"
    assert caplog.messages == [
        f"nothing pinned (no --pin-dir: otelproc pins nothing); removed the state file and 1 span a stop kept for "
        f"the next start ({unsent.FILE_NAME})"
    ]
