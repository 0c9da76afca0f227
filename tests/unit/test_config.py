"""Settings: one table of options resolved flag, then variable, then default, into typed Settings."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

import pytest

from otelproc import config
from otelproc.config import ConfigError
from otelproc.matching import EXE_NAME_MAX
from support import REPO


def resolve(argv: list[str], env: dict[str, str]) -> config.Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser, "run")
    return config.resolve("run", parser.parse_args(argv), env)


def test_flag_beats_environment_beats_default():
    assert resolve([], {}).service_name == "otelproc"
    assert resolve([], {"OTELPROC_SERVICE_NAME": "env"}).service_name == "env"
    settings = resolve(["--service-name", "flag"], {"OTELPROC_SERVICE_NAME": "env"})
    assert settings.service_name == "flag" and settings.sources["service_name"] == "flag"


def test_the_sdk_variables_are_spelled_as_the_sdk_spells_them():
    from opentelemetry import environment_variables as api
    from opentelemetry.sdk import environment_variables as sdk

    assert config.OTEL_TRACES_EXPORTER == api.OTEL_TRACES_EXPORTER
    assert config.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL == sdk.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
    assert config.OTEL_EXPORTER_OTLP_PROTOCOL == sdk.OTEL_EXPORTER_OTLP_PROTOCOL


def test_the_sdks_variable_stands_in_after_otelprocs_own():
    assert resolve([], {}).exporter == "auto" and resolve([], {}).otlp_protocol == "grpc"
    assert resolve([], {"OTEL_TRACES_EXPORTER": "console"}).exporter == "console"
    assert resolve([], {"OTEL_TRACES_EXPORTER": ""}).exporter == "auto"  # empty: unset, as the SDK reads it
    assert resolve([], {"OTELPROC_EXPORTER": "otlp", "OTEL_TRACES_EXPORTER": "console"}).exporter == "otlp"
    assert resolve(["--exporter", "console-json"], {"OTEL_TRACES_EXPORTER": "zipkin"}).exporter == "console-json"
    both = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}
    assert resolve([], both).otlp_protocol == "http/protobuf"  # the traces-only one first, as in the SDK
    assert resolve([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).otlp_protocol == "grpc"


@pytest.mark.parametrize(
    "argv, env, where",
    [
        (["--ring-buffer-size", "5000"], {}, "--ring-buffer-size"),
        ([], {"OTELPROC_MAX_PROCESSES": "-1"}, "OTELPROC_MAX_PROCESSES"),
        (["--start-span-delay", "soon"], {}, "--start-span-delay"),
        ([], {"OTELPROC_ADOPT": "maybe"}, "OTELPROC_ADOPT"),
        (["--scope", "cgroup=/nonexistent"], {}, "--scope"),
        ([], {"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            [],
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
    ],
)
def test_bad_settings_name_their_source(argv, env, where):
    with pytest.raises(ConfigError, match=where):
        resolve(argv, env)


def fits(value: object, hint: object) -> bool:
    """Whether a value is of a type hint: unions, Optional, tuple[X, ...], frozenset[X] and plain classes."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if typing.get_origin(hint) in (tuple, frozenset):
        return isinstance(value, typing.get_origin(hint)) and all(fits(v, args[0]) for v in value)
    return value is None if hint is type(None) else isinstance(value, hint)


def test_settings_are_typed_one_field_per_option():
    hints = typing.get_type_hints(config.Settings)
    settings = resolve(["--health-port", "9464", "--duration", "2.5"], {"OTELPROC_STATE_FILE": ""})
    for option in config.OPTIONS:
        assert fits(getattr(settings, option.name), hints[option.name]), option.name
        assert fits(option.parse(option.default), hints[option.name]), f"default of {option.name}"
    assert (settings.health_port, settings.duration, settings.state_file) == (9464, 2.5, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.adopt = False  # type: ignore[misc]


def test_an_option_without_a_settings_field_is_refused(monkeypatch):
    extra = config.Option("spool_dir", "", str, "somewhere", ("run",))
    monkeypatch.setattr(config, "OPTIONS", (*config.OPTIONS, extra))
    with pytest.raises(TypeError, match="spool_dir"):
        config.check_settings_fields()


@pytest.mark.parametrize(
    "text, message",
    [
        ("python,", "empty name"),
        ("py*thon", "only one trailing *"),
        ("/usr/bin/python3", "no '/'"),
        ("p" * (EXE_NAME_MAX + 1), "longer than"),
    ],
)
def test_bad_match_lists_say_why(text, message):
    with pytest.raises(ConfigError, match=message):
        config.parse_match(text)


def test_documented_settings_table_matches_the_code():
    assert config.markdown_table() in (REPO / "docs" / "configuration.md").read_text(), (
        "the settings table of docs/configuration.md is not the one OPTIONS makes: paste the output of "
        "python3 -c 'import otelproc.config as c; print(c.markdown_table())'"
    )


def test_usage_setting():
    assert resolve([], {}).usage == {"cpu", "memory"}
    assert resolve(["--usage", "cpu, io"], {}).usage == {"cpu", "io"}
    assert resolve([], {"OTELPROC_USAGE": ""}).usage == frozenset()
    with pytest.raises(ConfigError, match="disk: not a usage group; choose from cpu, memory, faults, switches, io"):
        resolve(["--usage", "cpu,disk"], {})
