#!/usr/bin/env bash
# Builds Helm from the Go module proxy (no release download is reachable here), for the chart's
# tests (tests/test_helm.py: helm lint, helm template).
#
#   deploy/helm/build.sh               print the path of the helm binary; build it first if needed
#   deploy/helm/build.sh --print-path  print that path; exit 1 if it is not built
#
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/helm-<version>/ and reused without Go
# (deploy/cached-go-build.sh).
set -euo pipefail
source "$(dirname "$0")/../cached-go-build.sh"

MODULE=helm.sh/helm/v4
VERSION=v4.3.2
NAME="Helm $VERSION"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/helm-$VERSION"
BINARIES=(helm)
PRINTED=$DIR/helm

build_into() {
    GOBIN="$1" go install -trimpath -ldflags "-X $MODULE/internal/version.version=$VERSION" "$MODULE/cmd/helm@$VERSION"
}

cached_go_build "$@"
