"""Unit tests: no root, no kernel BTF, no BPF load (see README.md here)."""
