#!/usr/bin/env bash
# Provides the Jaeger UI (jaeger-ui, the release that matches the Jaeger binary of build.sh) as a
# directory of static files, which Jaeger serves with `extensions: jaeger_query: ui: assets_path: DIR`
# (deploy/local/up.sh does). The binary built from the Go module proxy carries no UI of its own.
#
#   deploy/jaeger/build-ui.sh               print the cached UI directory; fetch or build it first if needed
#   deploy/jaeger/build-ui.sh --print-path  print the cached UI directory; exit 1 if there is none
#
# Where it comes from, first that works:
#   1. the release's assets.tar.gz (needs access to GitHub; a few seconds; JAEGER_UI_ASSETS_URL
#      names a copy elsewhere, file:// too);
#   2. a build of jaeger-ui's source: the archive in ../shared/jaeger-ui/ beside the repository
#      (JAEGER_UI_SOURCE moves it), with Node 24 from the npm registry (package node-linux-<arch>)
#      and the npm packages of its package-lock.json; 2 to 4 minutes on 2 cores, needs npm.
# The result is cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/jaeger-ui-<version>/ (8.7 MB) and
# reused without network or npm.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=v1.76.0  # jaeger-ui's release for Jaeger v1.76.0 / v2.13.0
ASSETS_URL=${JAEGER_UI_ASSETS_URL:-https://github.com/jaegertracing/jaeger-ui/releases/download/$VERSION/assets.tar.gz}
SOURCE=${JAEGER_UI_SOURCE:-$PWD/../shared/jaeger-ui/jaeger-ui-$VERSION-src.tar.gz}
SOURCE_SHA256=94a45ec8f2f068e26c55589f56b2e753ea71d0ebbb5a6f9d73ab99106869bd52
NODE_VERSION=24.22.3  # jaeger-ui v1.76.0 needs Node >= 24
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
UI_DIR=$CACHE/jaeger-ui-$VERSION
LOG=$CACHE/jaeger-ui-$VERSION.log  # the last build's

note() { echo "deploy/jaeger/build-ui.sh: $*" >&2; }

cached() { [[ -f $UI_DIR/index.html ]] && echo "$UI_DIR"; }

# from_release WORK: the release's assets, unpacked into WORK/ui.
from_release() {
    local work=$1 index
    curl -fsSL --connect-timeout 10 --max-time 300 -o "$work/assets.tar.gz" "$ASSETS_URL" 2>"$work/curl.log" || {
        note "the release's assets could not be fetched ($(tail -n 1 "$work/curl.log")); building the UI instead"
        return 1
    }
    mkdir "$work/release" && tar -xzf "$work/assets.tar.gz" -C "$work/release" || return 1
    index=$(find "$work/release" -name index.html -printf '%d %h\n' | sort -n | head -n 1 | cut -d' ' -f2-)
    [[ -n $index ]] || { note "the release's assets hold no index.html"; return 1; }
    mv "$index" "$work/ui"
}

# from_source WORK: jaeger-ui built from SOURCE into WORK/ui (its README's steps).
from_source() {
    local work=$1 arch
    [[ -f $SOURCE ]] || { note "no jaeger-ui source at $SOURCE (set JAEGER_UI_SOURCE)"; return 1; }
    echo "$SOURCE_SHA256  $SOURCE" | sha256sum --quiet -c - || { note "$SOURCE is not jaeger-ui $VERSION's source"; return 1; }
    command -v npm >/dev/null || { note "building the UI needs npm (apt-get install npm)"; return 1; }
    arch=$(uname -m)
    arch=${arch/x86_64/x64}
    arch=${arch/aarch64/arm64}
    note "building jaeger-ui $VERSION from $SOURCE with Node $NODE_VERSION (2 to 4 minutes; log: $LOG)"
    mkdir "$work/src"
    tar -xzf "$SOURCE" -C "$work/src"
    (
        set -e
        npm install --no-audit --no-fund --prefix "$work/node" "node-linux-$arch@$NODE_VERSION"
        export PATH=$work/node/node_modules/node-linux-$arch/bin:$PATH
        cd "$work/src"
        # husky and the version script want a git work tree
        git init -q && git add -A && git -c user.name=build -c user.email=build@localhost commit -qm "$VERSION"
        npm ci --no-audit --no-fund
        npm run --workspace @jaegertracing/plexus prepublishOnly
        cd packages/jaeger-ui && npm run build
    ) >"$LOG" 2>&1 || { tail -n 15 "$LOG" >&2; note "the UI build failed (log: $LOG)"; return 1; }
    mv "$work/src/packages/jaeger-ui/build" "$work/ui"
}

case "${1:-}" in
    --print-path)
        cached || { echo "no Jaeger UI in $CACHE: run deploy/jaeger/build-ui.sh" >&2; exit 1; }
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)"; exit 2 ;;
esac

mkdir -p "$CACHE"
exec 9>"$CACHE/jaeger-ui-build.lock"
flock 9  # a concurrent run waits, then finds the UI cached
cached && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if from_release "$work" || from_source "$work"; then
    # Moved beside its final name, then renamed: --print-path never sees half a UI.
    rm -rf "$UI_DIR.partial"
    mv "$work/ui" "$UI_DIR.partial"
    mv "$UI_DIR.partial" "$UI_DIR"
fi
cached || { note "no Jaeger UI could be fetched or built"; exit 1; }
