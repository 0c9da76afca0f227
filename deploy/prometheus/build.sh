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
# Cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/prometheus-<version>/ and reused without Go.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
MODULE=github.com/prometheus/prometheus
VERSION=3.16.0
MODULE_VERSION=v0.316.0
DIR="$CACHE/prometheus-$VERSION"

note() { echo "deploy/prometheus/build.sh: $*" >&2; }

built() { [[ -x "$DIR/prometheus" && -x "$DIR/promtool" ]]; }

case "${1:-}" in
    --print-path)
        built || { note "no Prometheus in $DIR: run deploy/prometheus/build.sh"; exit 1; }
        echo "$DIR"
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)"; exit 2 ;;
esac

mkdir -p "$CACHE"
exec 9>"$CACHE/prometheus-build.lock"
flock 9  # a concurrent run waits, then finds them built
if built; then
    echo "$DIR"
    exit 0
fi
command -v go >/dev/null || { note "building Prometheus needs Go (go.mod of $MODULE@$MODULE_VERSION names the oldest)"; exit 2; }

note "building Prometheus $VERSION and promtool from $MODULE@$MODULE_VERSION (several minutes, once)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
(
    cd "$work" &&
    go mod init prometheusbuild >/dev/null 2>&1 &&
    go get -tool "$MODULE/cmd/prometheus@$MODULE_VERSION" "$MODULE/cmd/promtool@$MODULE_VERSION" &&
    go build -trimpath -o . \
        -ldflags "-X github.com/prometheus/common/version.Version=$VERSION" \
        "$MODULE/cmd/prometheus" "$MODULE/cmd/promtool"
) >"$work/build.log" 2>&1 || status=1
if ((status != 0)); then
    tail -n 5 "$work/build.log" >&2
    note "the build failed (above)"
    exit 1
fi
mkdir -p "$DIR.partial"
mv "$work/prometheus" "$work/promtool" "$DIR.partial/"
rm -rf "$DIR"
mv "$DIR.partial" "$DIR"  # whole or not at all: --print-path never sees half of it
echo "$DIR"
