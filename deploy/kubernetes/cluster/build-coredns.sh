#!/usr/bin/env bash
# Builds CoreDNS, the test cluster's DNS (cluster.sh), from the Go module proxy.
#
#   deploy/kubernetes/cluster/build-coredns.sh               print the directory holding coredns; build it first if needed
#   deploy/kubernetes/cluster/build-coredns.sh --print-path  print it; exit 1 if it is not built
#
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/coredns-<version>/ (deploy/cached-go-build.sh).
set -euo pipefail
source "$(dirname "$0")/../../cached-go-build.sh"

VERSION=v1.15.0
NAME="CoreDNS $VERSION"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/coredns-$VERSION"
BINARIES=(coredns)
PRINTED=$DIR

build_into() {
    GOWORK=off GOBIN="$1" nice -n 10 go install -trimpath "github.com/coredns/coredns@$VERSION"
}

cached_go_build "$@"
