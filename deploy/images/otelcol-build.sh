#!/usr/bin/env bash
# Builds an OpenTelemetry Collector from an OpenTelemetry Collector Builder manifest, from the
# Go module proxy, and caches it by the manifest's content. Test scaffolding: the stand-in for
# the Collector image a manifest names (a user pulls the real image).
#
#   deploy/images/otelcol-build.sh MANIFEST               print the binary's path; build it first if needed
#   deploy/images/otelcol-build.sh --print-path MANIFEST  print the binary's path; exit 1 if none is built
#
# The binary is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/otelcol-<sha256 of the manifest,
# 12 digits>/<dist.name>; a changed manifest builds anew. The builder comes from
# go.opentelemetry.io/collector/cmd/builder at BUILDER_VERSION (the manifest's core version).
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
BUILDER_VERSION=v0.140.0

note() { echo "deploy/images/otelcol-build.sh: $*" >&2; }

print_only=false
if [[ "${1:-}" == --print-path ]]; then
    print_only=true
    shift
fi
if [[ $# -ne 1 || ! -f "$1" ]]; then
    note "usage: $0 [--print-path] MANIFEST (an existing builder manifest; got '${1:-}')"
    exit 2
fi
manifest=$(realpath "$1")
name=$(sed -n 's/^  name: *//p' "$manifest" | head -n1)
[[ -n $name ]] || { note "$manifest has no dist.name"; exit 2; }
dir="$CACHE/otelcol-$(sha256sum "$manifest" | cut -c1-12)"
binary="$dir/$name"

if [[ -x $binary ]]; then
    echo "$binary"
    exit 0
fi
if $print_only; then
    note "no Collector built from $manifest in $dir: run $0 $1"
    exit 1
fi
command -v go >/dev/null || { note "building the Collector needs Go (https://go.dev/dl/)"; exit 2; }

mkdir -p "$CACHE"
exec 9>"$dir.lock"
flock 9  # a concurrent run waits, then finds the binary cached
if [[ -x $binary ]]; then
    echo "$binary"
    exit 0
fi

note "building $name from $manifest (the first time, several minutes)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
GOBIN="$work/bin" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" 2>"$work/build.log" || {
    tail -n 5 "$work/build.log" >&2; exit 1; }
# This machine's module proxy answers the checksum database for some OpenTelemetry modules with
# 404 (its copies of the modules are served): those two module trees are taken from the proxy
# unchecked by the checksum database (the rest of the tree is checked as usual).
export GONOSUMDB="go.opentelemetry.io/collector,github.com/open-telemetry/opentelemetry-collector-contrib${GONOSUMDB:+,$GONOSUMDB}"
# The builder writes its Go sources and the binary under output_path, relative to the current
# directory: a throwaway one.
(cd "$work" && "$work/bin/builder" --config "$manifest") >"$work/build.log" 2>&1 || {
    tail -n 15 "$work/build.log" >&2; note "the build failed"; exit 1; }
built=$(find "$work" -path "$work/bin" -prune -o -type f -name "$name" -perm -u+x -print | head -n1)
[[ -n $built ]] || { note "the builder made no $name"; exit 1; }
mkdir -p "$dir"
# Beside its final name, then renamed: --print-path never sees half a binary.
mv "$built" "$binary.partial"
mv "$binary.partial" "$binary"
echo "$binary"
