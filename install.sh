#!/usr/bin/env bash
# Installs otelproc and what it needs on Debian/Ubuntu (run as root).
#   ./install.sh          libbpf1 and the Python package: enough for `otelproc run`
#   ./install.sh --test   also clang, bpftool and libbpf-dev (to rebuild the BPF object),
#                         the test tools (redis-server for the Celery test), the Python test and
#                         demo dependencies, the Jaeger binary the end-to-end tests and the local
#                         stack run (built with Go, cached), the Jaeger UI it serves (built with npm,
#                         cached) and the browser that tests it (Debian's chromium and chromium-driver)
#                         and OpenSearch with a user to run it as, for the fleet test and benchmark
#                         (deploy/opensearch/fetch.sh: Maven Central, cached), Prometheus and
#                         promtool for the alerting tests and the local stack (built with Go, cached),
#                         Helm for the chart's tests (built with Go, cached)
#                         and podman with podman-compose for the container tests, and Docker Engine
#                         with its compose plugin for the compose test (Debian 13's binaries, cached),
#                         and the single-node Kubernetes cluster of the cluster test (Kubernetes and
#                         CoreDNS built with Go, Debian's etcd unpacked, all cached)
set -euo pipefail
cd "$(dirname "$0")"

step() { echo "install.sh: $*"; }
fail() { echo "install.sh: $*" >&2; exit 1; }

test_setup=false
case "${1:-}" in
    --test) test_setup=true ;;
    "") ;;
    *) fail "unknown option $1 (use no option, or --test)" ;;
esac

packages=(libbpf1)
extras=""
if $test_setup; then
    packages+=(clang llvm bpftool libbpf-dev make gcc libc6-dev util-linux libcap2-bin procps redis-server chromium chromium-driver
               openjdk-17-jre-headless maven unzip containerd runc iptables containernetworking-plugins openssl)
    # The Jaeger UI is built with npm (and Node 24 from the npm registry) unless it is cached.
    deploy/jaeger/build-ui.sh --print-path >/dev/null 2>&1 || command -v npm >/dev/null || packages+=(npm)
    extras="[test]"
    # Before anything is installed: the Jaeger build needs a Go this script does not install.
    step "checking for the Jaeger binary, or a Go that can build it"
    if jaeger=$(deploy/jaeger/build.sh --print-path 2>/dev/null); then
        step "  Jaeger binary cached: $jaeger"
    elif ! deploy/jaeger/build.sh --check-go; then
        fail "the tests need Go for the Jaeger build (above); install it, then run ./install.sh --test again"
    fi
fi

step "checking packages: ${packages[*]}"
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    step "  installing with apt-get: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    step "  all installed"
fi

step "installing the otelproc Python package (pip install -e .$extras; about 10 s)"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".${extras}"
command -v pyenv >/dev/null && pyenv rehash || true  # puts the `otelproc` script on a pyenv PATH

# --- Kubernetes tests (tests/test_kubernetes.py) ---------------------------------------------------
# The contrib Collector the manifests and the compose file name (its stand-in's components:
# deploy/images/otelcol-contrib.yaml) for its `validate` test and the component check of
# tests/test_jaeger_configs.py, cached by the manifest's content; the manifest validator is built
# by the test with Go (module cache and build cache make it seconds after the first time).
if $test_setup; then
    step "building the contrib Collector unless cached (deploy/images/otelcol-build.sh; the first time, several minutes)"
    step "  Collector: $(deploy/images/otelcol-build.sh deploy/images/otelcol-contrib.yaml)"
fi
# --- end of the Kubernetes tests' block ------------------------------------------------------------

if $test_setup; then
    step "building the Jaeger binary unless cached (deploy/jaeger/build.sh; the first time, a few minutes)"
    step "  Jaeger binary: $(deploy/jaeger/build.sh)"
    step "building the Jaeger UI unless cached (deploy/jaeger/build-ui.sh; the first time, 2 to 4 minutes)"
    ui=$(deploy/jaeger/build-ui.sh) || fail "no Jaeger UI (above)"
    step "  Jaeger UI: $ui"
    step "building Prometheus and promtool unless cached (deploy/prometheus/build.sh; the first time, about 5 minutes)"
    step "  Prometheus: $(deploy/prometheus/build.sh)"
    step "building Helm unless cached (deploy/helm/build.sh; the first time, about 3 minutes)"
    step "  Helm: $(deploy/helm/build.sh)"
    step "fetching OpenSearch unless cached (deploy/opensearch/fetch.sh; the first time, about 30 s)"
    step "  OpenSearch: $(deploy/opensearch/fetch.sh)"
    # --- containers ---------------------------------------------------------------------------
    # podman, its settings and podman-compose for tests/test_containers.py and test_compose.py; the stand-in base
    # images are built (and cached) by deploy/images/build.sh, which .ci/run calls.
    step "setting up podman and podman-compose (deploy/images/setup-podman.sh)"
    deploy/images/setup-podman.sh
    # Docker Engine 26 and Docker's compose plugin for test_compose.py (Debian 12's Engine is too old for
    # the compose file's capabilities); the test starts dockerd itself.
    step "setting up Docker Engine and its compose plugin (deploy/images/setup-docker.sh; the first time, about 30 s)"
    deploy/images/setup-docker.sh
    # The test cluster (deploy/kubernetes/cluster/cluster.sh) runs on Debian's containerd, runc and CNI
    # plugins (the package list above) with these, cached:
    step "building Kubernetes unless cached (deploy/kubernetes/cluster/build-kubernetes.sh; the first time, about 10 minutes)"
    step "  Kubernetes: $(deploy/kubernetes/cluster/build-kubernetes.sh)"
    step "building CoreDNS unless cached (deploy/kubernetes/cluster/build-coredns.sh; the first time, about 3 minutes)"
    step "  CoreDNS: $(deploy/kubernetes/cluster/build-coredns.sh)"
    step "fetching etcd unless cached (deploy/kubernetes/cluster/fetch-etcd.sh; Debian's etcd-server, unpacked)"
    step "  etcd: $(deploy/kubernetes/cluster/fetch-etcd.sh)"
    # --- end containers ------------------------------------------------------------------------
    step "done: run the tests with \`python3 -m pytest\` (as root), or the local stack with deploy/local/up.sh"
else
    step "done: \`otelproc check\` says whether it can run here; \`otelproc run\` runs it"
fi
