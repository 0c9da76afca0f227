"""Unit tests of otelproc/kernel: the ones that read the shipped object's BTF need libbpf.so.1, nothing more."""
