"""Unit tests of otelproc/sidecar."""
