#!/usr/bin/env bash
# Builds, into podman's store, a stand-in for every base image the repository's files name,
# tagged with the names the files use: test scaffolding for machines that reach no image
# registry. A user pulls the real images; nothing here is needed with Docker Hub in reach.
#
#   deploy/images/build.sh           build every image the files name, unless already built
#   deploy/images/build.sh NAME...   only these (names as the files write them)
#   deploy/images/build.sh --list    print the names the files use, one a line, and exit
#
# The images and how each is made:
#   debian:bookworm-slim        mmdebstrap --variant=minbase bookworm, then podman import
#   python:3.11-slim-bookworm   that image plus Debian's python3.11 and pip, pip allowed to install
#                               as in the official image, and this host's CA certificates (HTTPS)
#   otel/opentelemetry-collector[-contrib]:V
#                               the Collector built with the OpenTelemetry Collector Builder
#                               from the manifest in deploy/images/ whose dist.name and
#                               dist.version match (otelcol / otelcol-contrib, V)
#   prom/prometheus:vV          the binary of deploy/prometheus/build.sh (which builds version V)
#   jaegertracing/jaeger:V      the binary of deploy/jaeger/build.sh; with the Jaeger UI's
#                               assets when they have been built (see JAEGER_UI_ASSETS below)
#   registry.k8s.io/pause:V     deploy/images/pause.c, compiled static
#
# Cached by content: each image carries a label with the sha256 of its inputs (this script,
# the manifest, the binary, ...); an image whose label matches is kept as it is. Downloads and
# Go builds are cached in ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc (images/, otelcol-*/ and
# jaeger-*/), so a wiped podman store rebuilds in seconds, not minutes.
#
# JAEGER_UI_ASSETS: a built Jaeger UI (a directory holding index.html); by default the one
# deploy/jaeger/build-ui.sh built and cached (install.sh --test builds it). The
# Jaeger image then holds it in /usr/share/jaeger-ui and sets JAEGER_UI_ASSETS to that path,
# which deploy/jaeger/all-in-one.yaml gives jaeger_query as ui.assets_path.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc"
MIRROR=http://deb.debian.org/debian
BUILDER_VERSION=v0.140.0  # go.opentelemetry.io/collector/cmd/builder, for the manifests' core version
# The checksum database, as the module proxy relays it here, lacks some contrib module versions
# that the proxy serves (zipkinexporter v0.140.1: 404): those are taken on the proxy's word.
CONTRIB_NOSUMDB=github.com/open-telemetry/opentelemetry-collector-contrib
LABEL=org.otelproc.stand-in.inputs
SELF_SHA=$(sha256sum "$0" | cut -c1-64)

note() { echo "deploy/images/build.sh: $*" >&2; }
fail() { note "$*"; exit 1; }

# The image names the repository's files use: FROM lines of the Dockerfiles, image: lines of
# the compose file and the Kubernetes manifests; not the images built from this repository.
names_in_files() {
    {
        sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile demo/Dockerfile
        sed -n 's/^ *image: *"\{0,1\}\([^" ]*\)"\{0,1\}.*/\1/p' docker-compose.yml deploy/kubernetes/*.yaml
    } | grep -v -E '^(otelproc|otelproc-demo)(:|$)' | sort -u
}

# qualified NAME: the name podman gives an image pulled as NAME (Docker Hub's rules).
qualified() {
    local name=$1 first=${1%%/*}
    if [[ $name != */* ]]; then
        echo "docker.io/library/$name"
    elif [[ $first == *.* || $first == *:* || $first == localhost ]]; then
        echo "$name"
    else
        echo "docker.io/$name"
    fi
}

# built IMAGE KEY: is IMAGE in podman's store, made from inputs whose hash is KEY?
built() {
    [[ $(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null) == "$2" ]]
}

key() { cat "$@" | sha256sum | cut -c1-64; }

# quietly COMMAND...: its output only if it fails.
quietly() {
    local log status=0
    log=$(mktemp)
    "$@" >"$log" 2>&1 || status=$?
    ((status == 0)) || tail -n 20 "$log" >&2
    rm -f "$log"
    return $status
}

# The Debian root file system, downloaded once and kept: the input of debian:bookworm-slim.
debian_rootfs() {
    local tar="$CACHE/images/debian-bookworm-minbase.tar"
    if [[ ! -s $tar ]]; then
        mkdir -p "$CACHE/images"
        note "mmdebstrap --variant=minbase bookworm (about 30 s)"
        mmdebstrap --quiet --variant=minbase --format=tar bookworm "$tar.partial" "$MIRROR" >&2
        mv "$tar.partial" "$tar"
    fi
    echo "$tar"
}

build_debian() {
    local image=$1 tar k
    [[ $image == docker.io/library/debian:bookworm-slim ]] || fail "no recipe for $image (only bookworm-slim)"
    tar=$(debian_rootfs)
    k=$(echo "$SELF_SHA $(stat -c '%s %Y' "$tar")" | key)
    built "$image" "$k" && return 0
    podman import --quiet --change 'CMD ["bash"]' --change "LABEL $LABEL=$k" "$tar" "$image" >/dev/null
}

build_python() {
    local image=$1 context k
    [[ $image == docker.io/library/python:3.11-slim-bookworm ]] || fail "no recipe for $image (only 3.11-slim-bookworm)"
    ensure docker.io/library/debian:bookworm-slim
    context=$(mktemp -d)
    mkdir "$context/ca"
    # The host's own CA certificates (Debian keeps local ones here): HTTPS through this host's
    # network works inside a build as it does on the host.
    find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$context/ca/" \; 2>/dev/null || true
    cat > "$context/Containerfile" <<EOF
FROM docker.io/library/debian:bookworm-slim
COPY ca/ /usr/local/share/ca-certificates/
# The official image's python is its own build in /usr/local; Debian's is marked as managed by
# apt, which stops \`pip install\` as root. Removing the mark makes pip install into /usr/local,
# as the official image does.
RUN apt-get update -q \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \\
        python3.11 python3-pip python3-venv ca-certificates \\
    && update-ca-certificates \\
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \\
    && ln -s python3 /usr/bin/python
ENV LANG=C.UTF-8
CMD ["python3"]
EOF
    k=$(cd "$context" && find . -type f | sort | xargs cat | cat - <(echo "$SELF_SHA") | key)
    if ! built "$image" "$k"; then
        quietly podman build --label "$LABEL=$k" -t "$image" "$context"
    fi
    rm -rf "$context"
}

# The manifest in deploy/images/ for the Collector distribution NAME at VERSION.
collector_manifest() {
    local name=$1 version=$2 manifest
    for manifest in deploy/images/*.yaml; do
        if [[ $(sed -n 's/^  name: *//p' "$manifest" | head -n1) == "$name" &&
              $(sed -n 's/^  version: *//p' "$manifest" | head -n1) == "$version" ]]; then
            echo "$manifest"
            return 0
        fi
    done
    fail "no manifest in deploy/images/ with dist.name $name and dist.version $version"
}

# The Collector binary of MANIFEST, built once and cached by the manifest's content.
collector_binary() {
    local manifest=$1 root=$PWD name dir work output tags
    name=$(sed -n 's/^  name: *//p' "$manifest" | head -n1)
    dir="$CACHE/otelcol-$(sha256sum "$manifest" | cut -c1-12)"
    mkdir -p "$CACHE"
    exec 8>"$dir.lock"
    flock 8  # a concurrent build of the same manifest waits, then finds the binary
    if [[ ! -x $dir/$name ]]; then
        command -v go >/dev/null || fail "building the Collector needs Go (install.sh --test says which)"
        note "building $name from $manifest with the Collector Builder $BUILDER_VERSION (the first time, several minutes)"
        work=$(mktemp -d)
        # The builder writes the sources; `go mod tidy -e` then resolves the modules. Without -e
        # (the builder's own tidy) it stops on modules that only the components' tests import
        # and that the module proxy here does not serve.
        output=$(sed -n 's/^  output_path: *//p' "$manifest")
        tags=$(sed -n 's/^  build_tags: *"\{0,1\}\([^"]*\)"\{0,1\}/\1/p' "$manifest")
        # `set -e` does not reach into a command tested by `if`: each step is chained instead.
        if ! (cd "$work" &&
              export GONOSUMDB="$CONTRIB_NOSUMDB${GONOSUMDB:+,$GONOSUMDB}" &&
              GOBIN="$work/bin" go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" &&
              bin/builder --config "$root/$manifest" --skip-get-modules --skip-compilation &&
              cd "$output" &&
              go mod tidy -e -compat=1.24 &&
              CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -tags "$tags" -o "$work/$name" .
             ) >"$work/build.log" 2>&1; then
            grep -v "^go: \(downloading\|finding\|found\)" "$work/build.log" | tail -n 15 >&2
            rm -rf "$work"
            fail "the Collector build failed"
        fi
        mkdir -p "$dir"
        mv "$work/$name" "$dir/$name.partial"
        mv "$dir/$name.partial" "$dir/$name"
        rm -rf "$work"
    fi
    exec 8>&-
    echo "$dir/$name"
}

# build_binary_image IMAGE BINARY PATH LINES: BINARY at PATH on debian:bookworm-slim (the
# binaries built here may link glibc), then LINES of Containerfile (entry point, user, ...);
# with the directory $ui_assets, if set, as ui/ in the build context.
build_binary_image() {
    local image=$1 binary=$2 path=$3 extra=$4 context k
    ensure docker.io/library/debian:bookworm-slim
    context=$(mktemp -d)
    cp "$binary" "$context/binary"
    printf '%s\n' "FROM docker.io/library/debian:bookworm-slim" "COPY binary $path" "$extra" > "$context/Containerfile"
    if [[ -d ${ui_assets:-} ]]; then
        cp -r "$ui_assets" "$context/ui"
    fi
    k=$(cd "$context" && find . -type f | sort | xargs cat | cat - <(echo "$SELF_SHA") | key)
    if ! built "$image" "$k"; then
        quietly podman build --label "$LABEL=$k" -t "$image" "$context"
    fi
    rm -rf "$context"
}

build_collector() {
    local image=$1 repository=${1%:*} version=${1##*:} name binary
    case $repository in
        docker.io/otel/opentelemetry-collector) name=otelcol ;;
        docker.io/otel/opentelemetry-collector-contrib) name=otelcol-contrib ;;
        *) fail "no recipe for $image" ;;
    esac
    binary=$(collector_binary "$(collector_manifest "$name" "$version")")
    # As in the official images: /<name> --config /etc/<name>/config.yaml, user 10001.
    build_binary_image "$image" "$binary" "/$name" \
        "$(printf '%s\n' "USER 10001" "EXPOSE 4317 4318" \
            "ENTRYPOINT [\"/$name\"]" "CMD [\"--config\", \"/etc/$name/config.yaml\"]")"
}

build_jaeger() {
    local image=$1 binary ui_assets="" candidate lines
    binary=$(deploy/jaeger/build.sh)
    for candidate in "${JAEGER_UI_ASSETS:-}" "$(deploy/jaeger/build-ui.sh --print-path 2>/dev/null)"; do
        if [[ -n $candidate && -f $candidate/index.html ]]; then
            ui_assets=$candidate
            break
        fi
    done
    # As in the official image: /cmd/jaeger/jaeger-linux listening on all addresses, user
    # 10001; without --config, the binary's own all-in-one configuration.
    lines=("ENV JAEGER_LISTEN_HOST=0.0.0.0" "EXPOSE 4317 4318 16686" "USER 10001"
           'ENTRYPOINT ["/cmd/jaeger/jaeger-linux"]')
    if [[ -n $ui_assets ]]; then
        note "Jaeger image with the UI assets of $ui_assets"
        lines+=("COPY ui/ /usr/share/jaeger-ui/" "ENV JAEGER_UI_ASSETS=/usr/share/jaeger-ui")
    fi
    build_binary_image "$image" "$binary" /cmd/jaeger/jaeger-linux "$(printf '%s\n' "${lines[@]}")"
}

build_prometheus() {
    local image=$1 dir version
    dir=$(deploy/prometheus/build.sh)
    version=$("$dir/prometheus" --version | sed -n 's/^prometheus, version \([^ ]*\).*/\1/p')
    [[ ${image##*:} == "v$version" ]] || fail "$image: deploy/prometheus/build.sh builds Prometheus $version"
    # As in the official image: /bin/prometheus, its data in /prometheus, user nobody.
    build_binary_image "$image" "$dir/prometheus" /bin/prometheus \
        "$(printf '%s\n' "RUN mkdir /prometheus && chown nobody:nogroup /prometheus" "USER nobody" \
            "WORKDIR /prometheus" "EXPOSE 9090" 'ENTRYPOINT ["/bin/prometheus"]' \
            'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]')"
}

build_pause() {
    local image=$1 work k
    k=$(key deploy/images/pause.c "$0")
    built "$image" "$k" && return 0
    command -v gcc >/dev/null || fail "building the pause image needs gcc and libc6-dev (install.sh --test installs them)"
    work=$(mktemp -d)
    mkdir "$work/root"
    gcc -static -Os -Wall -Wextra -o "$work/root/pause" deploy/images/pause.c
    strip "$work/root/pause"
    tar -C "$work/root" -cf "$work/pause.tar" pause
    podman import --quiet --change 'ENTRYPOINT ["/pause"]' --change 'USER 65535:65535' \
        --change "LABEL $LABEL=$k" "$work/pause.tar" "$image" >/dev/null
    rm -rf "$work"
}

# ensure IMAGE: build IMAGE (a qualified name) unless built from the same inputs.
ensure() {
    local image=$1
    case ${image%:*} in
        docker.io/library/debian) build_debian "$image" ;;
        docker.io/library/python) build_python "$image" ;;
        docker.io/otel/opentelemetry-collector*) build_collector "$image" ;;
        docker.io/jaegertracing/jaeger) build_jaeger "$image" ;;
        docker.io/prom/prometheus) build_prometheus "$image" ;;
        registry.k8s.io/pause) build_pause "$image" ;;
        *) fail "no recipe for $image: add one to deploy/images/build.sh" ;;
    esac
}

case "${1:-}" in
    --list) names_in_files; exit 0 ;;
    -*) fail "unknown option $1 (use --list, or image names)" ;;
esac
command -v podman >/dev/null || fail "no podman: install.sh --test installs it (deploy/images/setup-podman.sh)"

if (($#)); then names=("$@"); else mapfile -t names < <(names_in_files); fi
mkdir -p "$CACHE/images"
exec 9>"$CACHE/images/build.lock"
flock 9  # one build at a time: a concurrent run waits, then finds the images built
for name in "${names[@]}"; do
    start=$SECONDS
    ensure "$(qualified "$name")"
    echo "$name ($((SECONDS - start)) s)"
done
