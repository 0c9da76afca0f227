"""Unit tests of otelproc/otel."""
