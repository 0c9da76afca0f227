"""Writes deploy/seccomp/otelproc.json: the container runtime's default seccomp profile, as it
applies to otelproc's container, plus bpf() and perf_event_open().

Default profiles allow bpf() and perf_event_open() only with CAP_SYS_ADMIN (podman 4.3's,
Docker's before 23), which otelproc does not hold: it holds BPF, PERFMON, SYS_PTRACE and
DAC_READ_SEARCH. The profile is resolved for those capabilities and for the x86 and Arm
architectures, with no capability or architecture conditions left, because containerd reads
a Kubernetes Localhost profile as plain OCI runtime-spec JSON, which has none; podman, Docker
and CRI-O read the same file.

    python3 deploy/seccomp/generate.py [DEFAULT_PROFILE]   (default: podman's, below)
"""

import json
import sys
from pathlib import Path

PODMAN_DEFAULT = Path("/usr/share/containers/seccomp.json")
OUTPUT = Path(__file__).with_name("otelproc.json")
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
ARCHES = {"amd64", "x86", "x32", "arm64", "arm"}
ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
OTELPROC_NEEDS = ["bpf", "perf_event_open"]


def applies(rule: dict) -> bool:
    """Whether the default profile applies RULE to a container holding CAPABILITIES."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if not set(includes.get("caps") or []) <= CAPABILITIES:
        return False
    if set(excludes.get("caps") or []) & CAPABILITIES:
        return False
    if includes.get("arches") and not set(includes["arches"]) & ARCHES:
        return False
    return not (excludes.get("arches") and set(excludes["arches"]) >= ARCHES)


def resolve(default: dict) -> dict:
    """The default profile for otelproc's container, with OTELPROC_NEEDS allowed."""
    syscalls = []
    for rule in default["syscalls"]:
        if not applies(rule):
            continue
        names = [name for name in rule["names"] if name not in OTELPROC_NEEDS]
        if names:
            flat = {"names": names, "action": rule["action"]}
            if rule.get("args"):
                flat["args"] = rule["args"]
            if "errnoRet" in rule:
                flat["errnoRet"] = rule["errnoRet"]
            syscalls.append(flat)
    syscalls.append({"names": OTELPROC_NEEDS, "action": "SCMP_ACT_ALLOW"})
    profile = {"defaultAction": default["defaultAction"]}
    if "defaultErrnoRet" in default:
        profile["defaultErrnoRet"] = default["defaultErrnoRet"]
    profile["architectures"] = ARCHITECTURES
    profile["syscalls"] = syscalls
    return profile


def main() -> int:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else PODMAN_DEFAULT
    try:
        default = json.loads(source.read_text())
    except (OSError, ValueError) as error:
        print(f"generate.py: cannot read the default profile {source}: {error}", file=sys.stderr)
        return 2
    OUTPUT.write_text(json.dumps(resolve(default), indent=1) + "\n")
    print(f"{OUTPUT}: {source} for {', '.join(sorted(CAPABILITIES))}, plus {', '.join(OTELPROC_NEEDS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
