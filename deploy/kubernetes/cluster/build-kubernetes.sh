#!/usr/bin/env bash
# Builds the Kubernetes node and control plane the test cluster runs (cluster.sh):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl, from the module
# k8s.io/kubernetes on the Go module proxy (no release download is reachable here).
#
#   deploy/kubernetes/cluster/build-kubernetes.sh               print the directory of the binaries; build them first if needed
#   deploy/kubernetes/cluster/build-kubernetes.sh --print-path  print it; exit 1 if they are not built
#
# The module's go.mod points its k8s.io/* dependencies at ./staging, which the module's zip leaves
# out (each is a module of its own); the build points them at the same modules as published
# (v0.<minor>.<patch>) instead. About 10 minutes on 2 cores, once; cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/kubernetes-<version>/ (deploy/cached-go-build.sh).
set -euo pipefail
source "$(dirname "$0")/../../cached-go-build.sh"

VERSION=v1.37.2
STAGING_VERSION=v0.${VERSION#v1.}
NAME="Kubernetes $VERSION"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/otelproc/kubernetes-$VERSION"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
PRINTED=$DIR

build_into() {
    local work=$1 source minor=${VERSION#v1.}
    minor=${minor%%.*}
    export GOWORK=off GOFLAGS=-mod=mod
    source=$(go mod download -json "k8s.io/kubernetes@$VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    cp -r "$source" "$work/src"
    chmod -R u+w "$work/src"
    cd "$work/src"
    sed -i -E "s#^(\s*)(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+\$#\1\2 => \2 $STAGING_VERSION#" go.mod
    ! grep -q '=> ./staging' go.mod || { echo "go.mod still names ./staging"; return 1; }
    # What `kubectl version` and the API server's /version say (the build of a release sets the same).
    local base=k8s.io/component-base/version
    local ldflags="-s -w -X $base.gitVersion=$VERSION -X $base.gitMajor=1 -X $base.gitMinor=$minor"
    ldflags+=" -X $base.gitTreeState=clean -X $base.buildDate=1970-01-01T00:00:00Z"
    local binary
    for binary in "${BINARIES[@]}"; do
        nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$work/$binary" "./cmd/$binary"
    done
}

cached_go_build "$@"
