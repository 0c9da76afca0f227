"""The shared words: what survives of an environment block."""

from __future__ import annotations

from otelproc.model import parse_otel_env


def test_only_allowlisted_variables_are_kept():
    env = b"OTEL_SERVICE_NAME=first\0XOTEL_RESOURCE_ATTRIBUTES=no\0SECRET=x\0TRACEPARENT=tp\0TRACESTATE=\xff"
    assert dict(parse_otel_env(env)) == {"OTEL_SERVICE_NAME": "first", "TRACEPARENT": "tp", "TRACESTATE": "\\xff"}
