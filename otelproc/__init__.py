"""otelproc: process lifetimes of python/uvicorn services as OpenTelemetry spans, from eBPF."""

__version__ = "0.1.0"
