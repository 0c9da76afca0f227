#!/usr/bin/env bash
# Builds the Jaeger v2 binary the end-to-end tests and the local stack run (Jaeger all-in-one,
# and a second process running collector-config.yaml as the Collector), from the Go module proxy.
#
#   deploy/jaeger/build.sh               print the cached binary's path; build it first if needed
#   deploy/jaeger/build.sh --print-path  print the cached binary's path; exit 1 if none is built
#   deploy/jaeger/build.sh --check-go    is there a Go new enough to build it? (says what to install)
#   deploy/jaeger/build.sh --retry       try again the versions the module proxy refused before
#
# It tries Jaeger v2.20.0 first (its commit; Jaeger's v2 releases carry no Go module tag).
# Some module proxies refuse that pseudo-version; then it builds v1.76.0, which is the
# Jaeger v2 binary of release v2.13.0 under its Go module tag. A refusal is remembered
# (jaeger-<version>.refused beside the cache), so later runs do not ask again; --retry does.
# Binaries are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/jaeger-<version>/jaeger and
# reused without Go.
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
MODULE=github.com/jaegertracing/jaeger
# label, then module version: preferred first
CANDIDATES=(
    "v2.20.0 798e4b0fcf22609e381df764a01461affd813e1e"
    "v1.76.0 v1.76.0"
)
# The go directive of $MODULE@v1.76.0's go.mod: the oldest Go that builds the fallback.
GO_MINIMUM=1.24.6

note() { echo "deploy/jaeger/build.sh: $*" >&2; }

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

# go_problem: empty when a Go >= GO_MINIMUM is on PATH, else what is wrong and what to install.
go_problem() {
    local version
    if ! command -v go >/dev/null; then
        version="no go on PATH"
    else
        version=$(go env GOVERSION 2>/dev/null || echo unknown)
        local number=${version#go}
        number=${number%%[!0-9.]*}
        if [[ -n $number && $(printf '%s\n%s\n' "$GO_MINIMUM" "$number" | sort -V | head -n1) == "$GO_MINIMUM" ]]; then
            return 0
        fi
        version="found $version"
    fi
    local arch
    arch=$(uname -m)
    arch=${arch/x86_64/amd64}
    arch=${arch/aarch64/arm64}
    echo "building Jaeger needs Go >= $GO_MINIMUM ($version); install it with:" \
         "curl -fsSL https://go.dev/dl/go$GO_MINIMUM.linux-$arch.tar.gz | tar -C /usr/local -xz" \
         "&& export PATH=\$PATH:/usr/local/go/bin"
}

# build LABEL VERSION: one attempt, in a throwaway module; the binary appears only when complete.
# A module proxy's refusal of VERSION is remembered; other failures (network, disk) are not.
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
    ) 2>"$work/build.log" || status=1
    if ((status == 0)); then
        mkdir -p "$CACHE/jaeger-$label"
        # Copied beside its final name, then renamed: --print-path never sees half a binary.
        mv "$work/jaeger" "$CACHE/jaeger-$label/jaeger.partial"
        mv "$CACHE/jaeger-$label/jaeger.partial" "$CACHE/jaeger-$label/jaeger"
    else
        tail -n 5 "$work/build.log" >&2
    fi
    if ((status != 0)) && grep -Eq "403 Forbidden|404 Not Found|410 Gone|unknown revision|invalid version" "$work/build.log"; then
        {
            echo "$(date -u +%F) by $(go env GOPROXY)"
            grep -E "403 Forbidden|404 Not Found|410 Gone|unknown revision|invalid version" "$work/build.log" | head -n 3
        } > "$CACHE/jaeger-$label.refused"
    fi
    rm -rf "$work"
    return $status
}

case "${1:-}" in
    --print-path)
        cached || { echo "no Jaeger binary in $CACHE: run deploy/jaeger/build.sh" >&2; exit 1; }
        exit 0
        ;;
    --check-go)
        problem=$(go_problem) || true
        if [[ -n $problem ]]; then
            note "$problem"
            exit 2
        fi
        echo "$(go env GOVERSION) >= go$GO_MINIMUM: can build Jaeger"
        exit 0
        ;;
    --retry) rm -f "$CACHE"/jaeger-*.refused ;;
    "") ;;
    *) note "unknown option $1 (use --print-path, --check-go or --retry)"; exit 2 ;;
esac

mkdir -p "$CACHE"
exec 9>"$CACHE/jaeger-build.lock"
flock 9  # a concurrent run waits, then finds the binary cached

# Candidates in order: a cached one is used; a refused one is skipped; the first other one is built.
for candidate in "${CANDIDATES[@]}"; do
    label=${candidate%% *}
    [[ -x "$CACHE/jaeger-$label/jaeger" ]] && break
    if [[ -f "$CACHE/jaeger-$label.refused" ]]; then
        note "skipping Jaeger $label: the module proxy refused it on $(head -n1 "$CACHE/jaeger-$label.refused")" \
             "(deploy/jaeger/build.sh --retry tries again)"
        continue
    fi
    problem=$(go_problem) || true
    if [[ -n $problem ]]; then
        cached >/dev/null && { note "Jaeger $label not built (no Go >= $GO_MINIMUM); using the cached $(cached)"; break; }
        note "$problem"
        exit 2
    fi
    note "building Jaeger $label from $MODULE@${candidate#* } (a few minutes)"
    build "$label" "${candidate#* }" && break
    note "Jaeger $label could not be built; trying the next version"
done
cached || { note "no Jaeger version could be built"; exit 1; }
