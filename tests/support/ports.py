"""Free loopback ports for the servers tests and benchmarks start (no pytest here: bench/ imports it too)."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while chosen, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    """A free loopback port."""
    (port,) = free_ports(1)
    return port
