# Sourced by the scripts that build a tool from the Go module proxy and cache it
# (deploy/prometheus/build.sh, deploy/helm/build.sh): one command line for them all, a lock for
# concurrent runs, and a cache that holds a whole build or none.
#
#   SCRIPT               print the tool's path; build it first if needed
#   SCRIPT --print-path  print it; exit 1 if it is not built
#
# The script sets NAME (for messages), DIR (its cache directory), BINARIES (the files built into
# DIR) and PRINTED (the path to print), defines build_into WORK (builds BINARIES into WORK; its
# output is kept, and its end shown if it fails), then calls: cached_go_build "$@"

cached_go_build() {
    local script=${0#"$PWD"/}
    note() { echo "$script: $*" >&2; }
    built() {
        local binary
        for binary in "${BINARIES[@]}"; do [[ -x $DIR/$binary ]] || return 1; done
    }
    case "${1:-}" in
        --print-path)
            built || { note "no $NAME in $DIR: run $script"; exit 1; }
            echo "$PRINTED"
            exit 0
            ;;
        "") ;;
        *) note "unknown option $1 (use --print-path)"; exit 2 ;;
    esac

    mkdir -p "${DIR%/*}"
    exec 9>"$DIR.lock"
    flock 9  # a concurrent run waits, then finds it built
    if built; then
        echo "$PRINTED"
        exit 0
    fi
    command -v go >/dev/null || { note "building $NAME needs Go"; exit 2; }

    note "building $NAME from the Go module proxy (minutes, once)"
    CACHED_GO_BUILD_WORK=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
    trap 'rm -rf "$CACHED_GO_BUILD_WORK"' EXIT
    local work=$CACHED_GO_BUILD_WORK
    if ! (build_into "$work") >"$work/build.log" 2>&1; then
        tail -n 5 "$work/build.log" >&2
        note "the build failed (above)"
        exit 1
    fi
    rm -rf "$DIR.partial"
    mkdir -p "$DIR.partial"
    for binary in "${BINARIES[@]}"; do mv "$work/$binary" "$DIR.partial/"; done
    rm -rf "$DIR"
    mv "$DIR.partial" "$DIR"  # whole or not at all: --print-path never sees half of it
    echo "$PRINTED"
}
