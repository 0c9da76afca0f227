#!/usr/bin/env bash
# Builds Prometheus and promtool from the Go module proxy (no image or release download is
# reachable here), for the local stack (deploy/local/up.sh), the Prometheus stand-in image
# (deploy/images/build.sh) and the tests (promtool test rules, alerts end to end).
#
#   deploy/prometheus/build.sh               print the directory holding both; build them first if needed
#   deploy/prometheus/build.sh --print-path  print that directory; exit 1 if they are not built
#
# Prometheus 3.16.0 is the Go module github.com/prometheus/prometheus at v0.316.0. Without the
# web UI: its assets are built with npm in Prometheus's release process, not in the module, so the
# binary serves its API (all the stack and the tests use) and an error page at /.
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/prometheus-<version>/ and reused without Go
# (deploy/cached-go-build.sh).
set -euo pipefail
source "$(dirname "$0")/../cached-go-build.sh"

MODULE=github.com/prometheus/prometheus
VERSION=3.16.0
MODULE_VERSION=v0.316.0
NAME="Prometheus $VERSION and promtool"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/prometheus-$VERSION"
BINARIES=(prometheus promtool)
PRINTED=$DIR

build_into() {
    cd "$1" &&
    go mod init prometheusbuild &&
    go get -tool "$MODULE/cmd/prometheus@$MODULE_VERSION" "$MODULE/cmd/promtool@$MODULE_VERSION" &&
    go build -trimpath -o . -ldflags "-X github.com/prometheus/common/version.Version=$VERSION" \
        "$MODULE/cmd/prometheus" "$MODULE/cmd/promtool"
}

cached_go_build "$@"
