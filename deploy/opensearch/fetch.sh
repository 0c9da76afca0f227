#!/usr/bin/env bash
# Fetches the OpenSearch that tests/test_opensearch_fleet.py and bench/many_nodes.py run as plain
# processes on loopback (three nodes), and the unprivileged user they run it as.
#
#   deploy/opensearch/fetch.sh               print the unpacked distribution's path; fetch it first if needed
#   deploy/opensearch/fetch.sh --print-path  print it; exit 1 if it is not fetched yet
#
# The distribution is OpenSearch's minimal one from Maven Central (no plugins, 56 MB), fetched with
# `mvn dependency:get` (kept in ~/.m2) and unpacked once into /var/cache/otelproc (readable by
# the user that runs it: OpenSearch refuses to run as root). It needs Java 17 or later.
# As root, it also creates that user, otelproc-test (a system user with no home and no login shell).
set -euo pipefail

VERSION=2.19.6
ARTIFACT=org.opensearch.distribution.integ-test-zip:opensearch:$VERSION:zip
ZIP=${HOME}/.m2/repository/org/opensearch/distribution/integ-test-zip/opensearch/$VERSION/opensearch-$VERSION.zip
CACHE=${OTELPROC_OPENSEARCH_CACHE:-/var/cache/otelproc}
HOME_DIR=$CACHE/opensearch-$VERSION
RUN_AS=otelproc-test

note() { echo "deploy/opensearch/fetch.sh: $*" >&2; }

case "${1:-}" in
    --print-path)
        [[ -x $HOME_DIR/bin/opensearch ]] || { note "OpenSearch $VERSION is not fetched: run deploy/opensearch/fetch.sh"; exit 1; }
        echo "$HOME_DIR"
        exit 0
        ;;
    "") ;;
    *) note "unknown option $1 (use --print-path)"; exit 2 ;;
esac

if ! command -v java >/dev/null; then
    note "OpenSearch needs Java 17 or later: apt-get install openjdk-17-jre-headless"
    exit 2
fi
if [[ ! -x $HOME_DIR/bin/opensearch ]]; then
    if [[ ! -f $ZIP ]]; then
        command -v mvn >/dev/null || { note "fetching OpenSearch needs Maven: apt-get install maven"; exit 2; }
        note "fetching $ARTIFACT from Maven Central (56 MB)"
        mvn -q -B dependency:get -Dartifact="$ARTIFACT" >&2
    fi
    mkdir -p "$CACHE"
    chmod 755 "$CACHE"
    work=$(mktemp -d "$CACHE/opensearch-unpack.XXXXXX")
    unzip -q "$ZIP" -d "$work"
    chmod -R a+rX "$work"
    # Renamed when complete: --print-path never sees half a distribution.
    mv "$work/opensearch-$VERSION" "$HOME_DIR"
    rmdir "$work"
fi
if [[ $(id -u) == 0 ]] && ! id "$RUN_AS" >/dev/null 2>&1; then
    note "creating the system user $RUN_AS, which runs OpenSearch in the tests"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS"
fi
echo "$HOME_DIR"
