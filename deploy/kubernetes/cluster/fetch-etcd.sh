#!/usr/bin/env bash
# Fetches etcd for the test cluster (cluster.sh): the binary of Debian 12's etcd-server package,
# downloaded with apt and unpacked, not installed (the package would start an etcd of its own).
#
#   deploy/kubernetes/cluster/fetch-etcd.sh               print the directory holding etcd; fetch it first if needed
#   deploy/kubernetes/cluster/fetch-etcd.sh --print-path  print it; exit 1 if it is not fetched
#
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/etcd-<version>/.
set -euo pipefail

VERSION=3.4.23
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/etcd-$VERSION"

note() { echo "fetch-etcd.sh: $*" >&2; }

case "${1:-}" in
    --print-path)
        [[ -x $DIR/etcd ]] || { note "no etcd in $DIR: run deploy/kubernetes/cluster/fetch-etcd.sh"; exit 1; }
        echo "$DIR"
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)"; exit 2 ;;
esac

if [[ ! -x $DIR/etcd ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q "etcd-server=$VERSION*" >/dev/null 2>&1) ||
        { apt-get update -qq && (cd "$work" && apt-get download -q "etcd-server=$VERSION*" >/dev/null); }
    dpkg-deb -x "$work"/etcd-server_*.deb "$work/root"
    mkdir -p "$DIR.new"
    install -m 0755 "$work/root/usr/bin/etcd" "$DIR.new/etcd"
    rm -rf "$DIR"
    mv "$DIR.new" "$DIR"
fi
echo "$DIR"
