"""Can otelproc run here? Kernel, BTF, capabilities, libbpf, and a real load of the probe.

Each check gives one line; a failed one says what to do about it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from otelproc.errors import EXIT_USAGE, OtelprocError
from otelproc.kernel import libbpf
from otelproc.kernel.libbpf import LibbpfError

MIN_KERNEL = (5, 8)  # BPF ring buffer, CAP_BPF and CAP_PERFMON
BTF_PATH = Path("/sys/kernel/btf/vmlinux")

CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 2, 19, 21, 38, 39
CAP_NAMES = {
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_SYS_PTRACE: "CAP_SYS_PTRACE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_PERFMON: "CAP_PERFMON",
    CAP_BPF: "CAP_BPF",
}
# What each capability is for (measured: docs/security.md, "Least privilege"); `events` needs the first two.
CAP_PURPOSE = {
    CAP_BPF: "to load BPF programs and maps",
    CAP_PERFMON: "to attach to tracepoints and read kernel memory",
    CAP_SYS_PTRACE: "to read /proc/<pid>/exe and ns/pid of other users' processes",
    CAP_DAC_READ_SEARCH: "to read /proc/<pid>/environ (mode 0400) of other users' processes",
}
EVENTS_CAPS = (CAP_BPF, CAP_PERFMON)
RUN_CAPS = (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH)


class CheckFailed(OtelprocError):
    """A requirement is not met; the message is one actionable line."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Result:
    ok: bool
    line: str


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_caps(needed: tuple[int, ...]) -> list[int]:
    caps = effective_caps()
    missing = []
    for cap in needed:
        # Before CAP_BPF and CAP_PERFMON existed, CAP_SYS_ADMIN granted both, and still does.
        if caps & (1 << cap) or (cap in (CAP_BPF, CAP_PERFMON) and caps & (1 << CAP_SYS_ADMIN)):
            continue
        missing.append(cap)
    return missing


def require_caps(needed: tuple[int, ...]) -> None:
    missing = missing_caps(needed)
    if missing:
        cap = missing[0]
        grant = ",".join(CAP_NAMES[c] for c in needed)
        raise CheckFailed(f"missing capability {CAP_NAMES[cap]} ({CAP_PURPOSE[cap]}); run as root or grant {grant}")


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def check_kernel() -> Result:
    release = os.uname().release
    if kernel_version(release) < MIN_KERNEL:
        return Result(False, f"kernel {release} is too old: otelproc needs Linux >= 5.8 (BPF ring buffer, CAP_BPF)")
    return Result(True, f"kernel: {release} (>= 5.8)")


def check_btf() -> Result:
    if not os.access(BTF_PATH, os.R_OK):
        return Result(False, f"{BTF_PATH} is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y for CO-RE")
    return Result(True, f"BTF: {BTF_PATH} ({BTF_PATH.stat().st_size // 1024} KiB)")


def check_caps() -> Result:
    missing = missing_caps(RUN_CAPS)
    if missing:
        names = ", ".join(f"{CAP_NAMES[c]} ({CAP_PURPOSE[c]})" for c in missing)
        return Result(False, f"missing capabilities: {names}; run as root or grant them")
    return Result(True, "capabilities: " + ", ".join(CAP_NAMES[c] for c in RUN_CAPS))


def check_libbpf() -> Result:
    try:
        return Result(True, f"libbpf: libbpf.so.1 version {libbpf.version()}")
    except LibbpfError as exc:
        return Result(False, str(exc))


def check_probe() -> Result:
    from otelproc.kernel.probe import Probe, ProbeConfig

    started = time.perf_counter()
    try:
        with Probe(ProbeConfig(), lambda raw: None) as probe:
            elapsed = time.perf_counter() - started
            left_out = "".join(f"; {program.warning()}" for program in probe.left_out)
    except LibbpfError as exc:
        return Result(False, f"BPF programs do not load: {exc}")
    return Result(True, f"BPF programs: loaded, attached and detached in {elapsed * 1000:.0f} ms{left_out}")


def run_checks() -> list[Result]:
    """All checks; the probe is tried only when the ones it depends on passed."""
    results = [check_kernel(), check_btf(), check_caps(), check_libbpf()]
    if all(r.ok for r in results):
        results.append(check_probe())
    return results
