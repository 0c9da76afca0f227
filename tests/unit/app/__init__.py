"""Unit tests of otelproc/app, and the import boundaries of the roles."""
