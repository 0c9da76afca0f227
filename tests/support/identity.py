"""The trace and span ids a test expects of a process, computed here, not by otelproc."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
HOST_PIDNS = os.stat("/proc/self/ns/pid").st_ino


def expected_ids(pidns: int, vpid: int, ticks: int) -> tuple[str, str]:
    """The identity scheme of otelproc/identity.py, written out independently."""
    key = f"{BOOT_ID}/{pidns}/{vpid}/{ticks}".encode()
    return (
        hashlib.sha256(b"otelproc trace " + key).digest()[:16].hex(),
        hashlib.sha256(b"otelproc span " + key).digest()[:8].hex(),
    )
