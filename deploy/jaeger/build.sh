#!/usr/bin/env bash
# Builds the Jaeger v2 binary the end-to-end test runs (Jaeger all-in-one, and a second
# process running collector-config.yaml as the Collector), from the Go module proxy.
#
#   deploy/jaeger/build.sh               build it unless it is cached; print its path
#   deploy/jaeger/build.sh --print-path  print the cached binary's path; exit 1 if none is built
#
# It tries Jaeger v2.20.0 first (its commit; Jaeger's v2 releases carry no Go module tag).
# Some module proxies refuse that pseudo-version; then it builds v1.76.0, which is the
# Jaeger v2 binary of release v2.13.0 under its Go module tag. Binaries are cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/jaeger-<version>/jaeger and reused.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
MODULE=github.com/jaegertracing/jaeger
# label, then module version: preferred first
CANDIDATES=(
    "v2.20.0 798e4b0fcf22609e381df764a01461affd813e1e"
    "v1.76.0 v1.76.0"
)

cached() {
    local label
    for candidate in "${CANDIDATES[@]}"; do
        label=${candidate%% *}
        if [[ -x "$CACHE/jaeger-$label/jaeger" ]]; then
            echo "$CACHE/jaeger-$label/jaeger"
            return 0
        fi
    done
    return 1
}

# build LABEL VERSION: one attempt, in a throwaway module; the binary appears only when complete.
build() {
    local label=$1 version=$2 work status=0
    work=$(mktemp -d)
    # set -e does not reach into a command tested by ||: each step is chained instead.
    (
        cd "$work" &&
        go mod init jaegerbuild >/dev/null 2>&1 &&
        go get -tool "$MODULE/cmd/jaeger@$version" &&
        go build -trimpath -o jaeger \
            -ldflags "-X $MODULE/internal/version.latestVersion=$label" "$MODULE/cmd/jaeger"
    ) || status=1
    if ((status == 0)); then
        mkdir -p "$CACHE/jaeger-$label"
        # Copied beside its final name, then renamed: --print-path never sees half a binary.
        mv "$work/jaeger" "$CACHE/jaeger-$label/jaeger.partial"
        mv "$CACHE/jaeger-$label/jaeger.partial" "$CACHE/jaeger-$label/jaeger"
    fi
    rm -rf "$work"
    return $status
}

if [[ "${1:-}" == "--print-path" ]]; then
    cached || { echo "no Jaeger binary in $CACHE: run deploy/jaeger/build.sh" >&2; exit 1; }
    exit 0
fi

command -v go >/dev/null || { echo "deploy/jaeger/build.sh needs Go (https://go.dev/dl/)" >&2; exit 2; }
mkdir -p "$CACHE"
exec 9>"$CACHE/jaeger-build.lock"
flock 9  # a concurrent run waits, then finds the binary cached

# The preferred version is tried once per run until it is cached; a cached fallback is then reused.
for candidate in "${CANDIDATES[@]}"; do
    label=${candidate%% *}
    [[ -x "$CACHE/jaeger-$label/jaeger" ]] && break
    echo "building Jaeger $label from $MODULE@${candidate#* } (a few minutes)" >&2
    build "$label" "${candidate#* }" && break
    echo "Jaeger $label could not be built (refused by the Go module proxy $(go env GOPROXY)?);" \
         "falling back to the next version in deploy/jaeger/build.sh" >&2
done
cached || { echo "deploy/jaeger/build.sh: no Jaeger version could be built" >&2; exit 1; }
