#!/usr/bin/env bash
# Builds Helm from the Go module proxy (no release download is reachable here), for the chart's
# tests (tests/test_helm.py: helm lint, helm template).
#
#   deploy/helm/build.sh               print the path of the helm binary; build it first if needed
#   deploy/helm/build.sh --print-path  print that path; exit 1 if it is not built
#
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/helm-<version>/ and reused without Go.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
MODULE=helm.sh/helm/v4
VERSION=v4.3.2
DIR="$CACHE/helm-$VERSION"

note() { echo "deploy/helm/build.sh: $*" >&2; }

built() { [[ -x "$DIR/helm" ]]; }

case "${1:-}" in
    --print-path)
        built || { note "no helm in $DIR: run deploy/helm/build.sh"; exit 1; }
        echo "$DIR/helm"
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)"; exit 2 ;;
esac

mkdir -p "$CACHE"
exec 9>"$CACHE/helm-build.lock"
flock 9  # a concurrent run waits, then finds it built
if built; then
    echo "$DIR/helm"
    exit 0
fi
command -v go >/dev/null || { note "building Helm needs Go"; exit 2; }

note "building Helm $VERSION from $MODULE (a few minutes, once)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! GOBIN="$work" go install -trimpath \
        -ldflags "-X $MODULE/internal/version.version=$VERSION" "$MODULE/cmd/helm@$VERSION" >"$work/build.log" 2>&1; then
    tail -n 5 "$work/build.log" >&2
    note "the build failed (above)"
    exit 1
fi
mkdir -p "$DIR.partial"
mv "$work/helm" "$DIR.partial/"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"  # whole or not at all: --print-path never sees half of it
echo "$DIR/helm"
