"""Where --otlp-endpoint points is checked at start: an address that names no collector is a one-line
error, a host that does not resolve a warning, before the first export would find out."""

from __future__ import annotations

import logging

import pytest

from otelproc import cli, config
from otelproc.errors import ConfigError
from otelproc.otel import exporters


def destination(*flags: str, environ: dict[str, str] | None = None) -> exporters.Destination:
    args = cli.build_parser().parse_args(["run", "--exporter", "otlp", *flags])
    return exporters.make_destination(config.resolve("run", args, environ=environ or {}))


@pytest.mark.parametrize(
    "endpoint,protocol,why",
    [
        ("notaurl", "grpc", "no port in it"),
        ("ftp://collector:4317", "grpc", "the scheme is 'ftp', not http or https"),
        ("http://:4318", "http/protobuf", "no host in it"),
        ("localhost:99999", "grpc", "Port out of range 0-65535"),
    ],
)
def test_an_endpoint_that_names_no_collector_is_one_line(endpoint, protocol, why):
    with pytest.raises(ConfigError) as refused:
        destination("--otlp-endpoint", endpoint, "--otlp-protocol", protocol)
    assert str(refused.value).startswith(f"--otlp-endpoint {endpoint}: not a collector's address ({why}); give ")


def test_the_sdks_variable_is_checked_and_named(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "notaurl")
    with pytest.raises(ConfigError, match="^OTEL_EXPORTER_OTLP_ENDPOINT notaurl: not a collector's address"):
        destination()


def test_a_host_that_does_not_resolve_is_said_at_start(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    with caplog.at_level(logging.WARNING, logger="otelproc"):
        made = destination("--otlp-endpoint", "collector.invalid:4317")
    made.exporter.shutdown()
    assert made.description == "exporting spans over OTLP/gRPC to collector.invalid:4317"
    (line,) = caplog.messages
    assert line.startswith("--otlp-endpoint collector.invalid:4317: the host collector.invalid does not resolve (")


@pytest.mark.parametrize(
    "endpoint,protocol",
    [
        ("localhost:4317", "grpc"),
        ("http://127.0.0.1:4317", "grpc"),
        ("https://localhost", "grpc"),
        ("http://localhost:4318", "http/protobuf"),
        ("localhost", "http/protobuf"),
    ],
)
def test_addresses_the_exporters_take_start_without_a_word(endpoint, protocol, monkeypatch, caplog):
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    with caplog.at_level(logging.WARNING, logger="otelproc"):
        destination("--otlp-endpoint", endpoint, "--otlp-protocol", protocol).exporter.shutdown()
    assert caplog.messages == []
