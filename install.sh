#!/usr/bin/env bash
# Installs otelproc and what it needs on Debian/Ubuntu (run as root).
#   ./install.sh          libbpf1 and the Python package: enough for `otelproc run`
#   ./install.sh --test   also clang, bpftool and libbpf-dev (to rebuild the BPF object),
#                         the test tools, the Python test dependencies, and the Jaeger
#                         binary the end-to-end test runs (built with Go, cached)
set -euo pipefail
cd "$(dirname "$0")"

packages=(libbpf1)
extras=""
if [[ "${1:-}" == "--test" ]]; then
    packages+=(clang llvm bpftool libbpf-dev make gcc libc6-dev util-linux libcap2-bin procps)
    extras="[test]"
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".${extras}"
command -v pyenv >/dev/null && pyenv rehash || true  # puts the `otelproc` script on a pyenv PATH

if [[ "${1:-}" == "--test" ]]; then
    deploy/jaeger/build.sh >/dev/null
fi
