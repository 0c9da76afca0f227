#!/usr/bin/env bash
# Sets up podman for the container tests (run as root; install.sh --test calls it).
#
#   deploy/images/setup-podman.sh
#
# Debian's podman 4.3 with runc (crun refuses the hybrid cgroup v1/v2 layout of the test
# machines), mmdebstrap for the stand-in base images (deploy/images/build.sh), and the
# settings podman needs here, in a drop-in of its own (/etc/containers/containers.conf.d/):
# runc, cgroupfs (no systemd to manage cgroups), and default ulimits at or below the shell's
# hard limits (podman's defaults are higher, and runc's setrlimit then fails).
#
# And podman-compose (PyPI), which runs docker-compose.yml as it is. Docker's compose client
# against podman's API socket does not: it sends a seccomp profile's content, and podman 4.3's
# Docker API takes it for a file name.
set -euo pipefail

PODMAN_COMPOSE=podman-compose==1.6.0

note() { echo "setup-podman.sh: $*"; }

packages=(podman runc conmon catatonit iptables containernetworking-plugins golang-github-containernetworking-plugin-dnsname
          mmdebstrap uidmap ca-certificates)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    note "installing with apt-get: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf.d/50-otelproc-tests.conf
mkdir -p "${conf%/*}"
cat > "$conf.new" <<'CONF'
# Written by otelproc's deploy/images/setup-podman.sh for its container tests.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$conf.new" "$conf"
note "podman $(podman --version | awk '{print $3}'): $(podman info --format '{{.Host.OCIRuntime.Name}}, {{.Host.CgroupManager}}, cgroups {{.Host.CgroupsVersion}}') ($conf)"

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$PODMAN_COMPOSE"
command -v pyenv >/dev/null && pyenv rehash || true  # puts podman-compose on a pyenv PATH
note "$(podman-compose version 2>/dev/null | head -n1)"
