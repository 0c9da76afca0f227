#!/usr/bin/env bash
# Sets up Docker Engine and Docker's compose plugin for the compose test (run as root;
# install.sh --test calls it, after installing Debian 12's containerd, runc and iptables).
# Nothing is installed system-wide: the Engine's binaries go into a cache directory that the
# test puts first on its PATH, and the test starts dockerd itself (tests/support/docker_engine.py).
#
#   deploy/images/setup-docker.sh               fetch unless cached, then print the versions
#   deploy/images/setup-docker.sh --print-path  print the directory that holds bin/ and cli-plugins/;
#                                               exit 1 if they are not there
#
# Why not Debian 12's docker.io: it is Engine 20.10, which refuses the compose file's
# `cap_add: [BPF, PERFMON]` ("unknown capability"). Debian 13 (trixie), on the same mirror,
# has Engine 26.1.5 and compose 2.26.1, whose binaries need only glibc 2.34. Their packages
# are downloaded with apt through a sources list of their own (this host's apt sources and
# packages are left as they are: no trixie package is installed) and unpacked here.
set -euo pipefail

ENGINE_VERSION=26.1.5
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/docker-$ENGINE_VERSION"
MIRROR=http://deb.debian.org/debian
PACKAGES=(docker.io docker-cli docker-compose)  # dockerd and docker-proxy; docker; the compose plugin

note() { echo "setup-docker.sh: $*"; }

fetched() { [[ -x $DIR/bin/dockerd && -x $DIR/bin/docker && -x $DIR/cli-plugins/docker-compose ]]; }

case "${1:-}" in
    --print-path)
        fetched || { note "no Docker Engine in $DIR: run deploy/images/setup-docker.sh" >&2; exit 1; }
        echo "$DIR"
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)" >&2; exit 2 ;;
esac

for command in containerd runc iptables; do
    command -v "$command" >/dev/null || { note "no $command: ./install.sh --test installs it (Debian's package)"; exit 2; }
done

if ! fetched; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/debs" "$work/root"
    echo "deb $MIRROR trixie main" > "$work/sources.list"
    apt_trixie=(-q -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$work/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
                -o APT::Sandbox::User=root)
    note "downloading ${PACKAGES[*]} from Debian 13 (trixie), about 40 MB"
    apt-get "${apt_trixie[@]}" update >/dev/null
    (cd "$work/debs" && apt-get "${apt_trixie[@]}" download "${PACKAGES[@]}" >/dev/null)
    for deb in "$work"/debs/*.deb; do
        dpkg-deb -x "$deb" "$work/root"
    done
    mkdir -p "$DIR.new/bin" "$DIR.new/cli-plugins"
    for binary in sbin/dockerd sbin/docker-proxy bin/docker; do
        install -m 0755 "$work/root/usr/$binary" "$DIR.new/bin/"
    done
    install -m 0755 "$work/root/usr/libexec/docker/cli-plugins/docker-compose" "$DIR.new/cli-plugins/"
    rm -rf "$DIR"
    mv "$DIR.new" "$DIR"
fi

note "$("$DIR/bin/dockerd" --version), $("$DIR/cli-plugins/docker-compose" version) ($DIR)"
note "$(containerd --version | awk '{print $1, $3}'), $(runc --version | head -n1)"
