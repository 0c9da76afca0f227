#!/usr/bin/env bash
# The local stack without Docker (as root): Prometheus (deploy/prometheus/build.sh), Jaeger
# all-in-one and the Collector (both under the Jaeger binary of deploy/jaeger/build.sh),
# `otelproc run` and the demo app, as processes on loopback. deploy/local/down.sh stops exactly
# what this started.
#
# When it cannot finish (a component fails to start, Ctrl-C), it stops what it started, a line
# each, and exits non-zero with the reason. An earlier stack whose processes are all gone (no
# down.sh ran) is cleaned up first; one still partly running is left to down.sh, which it names.
#
# Every address can be moved by its variable (defaults below); OTELPROC_* variables reach
# otelproc (OTELPROC_MATCH the demo's helper too); PYTHON is the demo's interpreter.
# Jaeger keeps its traces in Badger under JAEGER_DATA_DIR for JAEGER_RETENTION (a Go duration),
# across restarts of the stack, and serves the UI of deploy/jaeger/build-ui.sh, whose Monitor tab
# reads the span metrics Prometheus scrapes from the Collector (deploy/jaeger/monitor.yaml).
# Prometheus evaluates deploy/prometheus/rules.yml and keeps its data in PROMETHEUS_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
source deploy/local/common.sh

: "${JAEGER_OTLP_GRPC_PORT:=14317}" "${JAEGER_OTLP_HTTP_PORT:=14318}"
: "${JAEGER_QUERY_HTTP_PORT:=16686}" "${JAEGER_QUERY_GRPC_PORT:=16685}"
: "${COLLECTOR_OTLP_GRPC_PORT:=4317}" "${COLLECTOR_OTLP_HTTP_PORT:=4318}" "${COLLECTOR_TELEMETRY_PORT:=8888}"
: "${COLLECTOR_PROMETHEUS_PORT:=8889}" "${PROMETHEUS_PORT:=9090}" "${PROMETHEUS_DATA_DIR:=$STACK_DIR/prometheus-data}"
: "${DEMO_PORT:=8000}" "${PYTHON:=python3}"
: "${JAEGER_DATA_DIR:=$STACK_DIR/jaeger-data}" "${JAEGER_RETENTION:=72h}"
HOST=127.0.0.1

say() { note "$*"; }
# fail REASON: says why up.sh stops; the EXIT trap then stops what it started.
fail() { note "$*" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# holder PORT: " (NAME, pid N, listens on it)", as far as ss can tell; else nothing.
holder() {
    local found
    found=$(ss -Hltnp "sport = :$1" 2>/dev/null |
            sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/ (\1, pid \2, listens on it)/p' | head -n 1) || true
    echo "$found"
}

# wait_for NAME PORT: until NAME's process listens on PORT; it dying, or 90 s, is a failure.
wait_for() {
    local name=$1 port=$2
    for _ in $(seq 180); do
        listening "$port" && return 0
        alive "$name" || fail "$name exited; the end of $STACK_DIR/$name.log:
$(tail -n 15 "$STACK_DIR/$name.log" 2>/dev/null)"
        sleep 0.5
    done
    fail "$name did not listen on $HOST:$port within 90 s (log: $STACK_DIR/$name.log)"
}

# start NAME COMMAND...: in a session of its own (down.sh signals the whole session), output to
# its log, without the lock's fd (the lock is up.sh's alone).
started=() starting="" before=""
start() {
    local name=$1
    shift
    starting=$name before=${!:-}
    setsid "$@" >"$STACK_DIR/$name.log" 2>&1 < /dev/null 8>&- &
    record "$name" $!
    # setsid(2) runs in the child: until it has, NAME's session has no member, and alive would
    # take NAME for exited (an empty log; seen under load).
    while [[ $(ps -o sid= -p $! | tr -d ' ') != "$!" ]] && kill -0 $! 2>/dev/null; do sleep 0.05; done
    started+=("$name") starting=""
}

# on_exit: up.sh ends; unless the stack is up, what it started is stopped (and said so, a line
# each), and its pinned probe removed, whichever way up.sh ended: a failed start, a command
# that failed under set -e, Ctrl-C.
up=false
on_exit() {
    local status=$? command=$BASH_COMMAND why  # BASH_COMMAND: what ran when up.sh began to exit
    trap - EXIT INT TERM HUP
    [[ $up == false ]] || return 0
    ((status != 0)) || status=1
    case $status in
        129) why="SIGHUP: its terminal went away" ;;
        130) why="interrupted" ;;
        143) why="SIGTERM" ;;
        *) why="exit status $status"; [[ $command == "exit "* ]] || why+=" of \`$command\`" ;;
    esac
    # interrupted between starting a process and recording it: $! is that process
    if [[ -n $starting ]] && ! recorded "$starting" && [[ ${!:-} != "$before" ]]; then
        record "$starting" "$!"
        started+=("$starting")
    fi
    {
        note "up.sh did not finish ($why); stopping what it started"
        # otelproc's pinned probe goes too, if this run started an otelproc (it may have pinned one)
        if stop_all && { [[ " ${started[*]} " != *" otelproc "* ]] || detach; }; then
            note "nothing of the stack is left running"
        else
            note "something could not be stopped (above); deploy/local/down.sh tries again"
        fi
    } >&2
    exit "$status"
}

mkdir -p "$STACK_DIR"
lock
# What an earlier run left: a stack still up (all or part of it), or pid files of processes gone.
running=() missing=() gone=()
for name in "${STACK[@]}"; do
    if alive "$name"; then
        running+=("$name")
    else
        missing+=("$name")
        if recorded "$name"; then gone+=("$name"); fi
    fi
done
if ((${#running[@]})); then
    if ((${#missing[@]})); then
        note "partly up: $(list "${running[@]}") running; $(list "${missing[@]}") not;" \
             "run deploy/local/down.sh (it stops the rest), then deploy/local/up.sh" >&2
    else
        note "already up (logs and pid files in $STACK_DIR); deploy/local/down.sh stops it" >&2
    fi
    exit 1
fi
if ((${#gone[@]})); then
    say "an earlier stack ended without down.sh ($(list "${gone[@]}") gone); cleaning up after it"
    if ! { stop_all && detach; }; then
        note "could not clean up after the earlier stack (above); deploy/local/down.sh tries again" >&2
        exit 1
    fi
fi
for variable in JAEGER_OTLP_GRPC_PORT JAEGER_OTLP_HTTP_PORT JAEGER_QUERY_HTTP_PORT JAEGER_QUERY_GRPC_PORT \
                COLLECTOR_OTLP_GRPC_PORT COLLECTOR_OTLP_HTTP_PORT COLLECTOR_TELEMETRY_PORT COLLECTOR_PROMETHEUS_PORT \
                PROMETHEUS_PORT DEMO_PORT; do
    if listening "${!variable}"; then
        echo "local stack: port ${!variable} is taken; set $variable to another port$(holder "${!variable}")" >&2
        exit 1
    fi
done
python=$("$PYTHON" -c 'import sys; print(sys.executable)') || { echo "local stack: no python at PYTHON=$PYTHON" >&2; exit 1; }
instrument=$(dirname "$python")/opentelemetry-instrument
[[ -x $instrument ]] || instrument=$(command -v opentelemetry-instrument) || {
    echo "local stack: opentelemetry-instrument is missing for $python: pip install \".[app]\" (or ./install.sh --test)" >&2
    exit 1
}
"$python" -c 'import uvicorn, opentelemetry.instrumentation.asgi' 2>/dev/null || {
    echo "local stack: the demo app needs uvicorn and the ASGI instrumentation: pip install -r demo/requirements.txt" >&2
    exit 1
}
if ! jaeger=$(deploy/jaeger/build.sh --print-path 2>/dev/null); then
    say "building the Jaeger binary (deploy/jaeger/build.sh; once, a few minutes)"
    jaeger=$(deploy/jaeger/build.sh) || { echo "local stack: no Jaeger binary" >&2; exit 1; }
fi
if ! ui=$(deploy/jaeger/build-ui.sh --print-path 2>/dev/null); then
    say "building the Jaeger UI (deploy/jaeger/build-ui.sh; once, 2 to 4 minutes)"
    ui=$(deploy/jaeger/build-ui.sh) || { echo "local stack: no Jaeger UI" >&2; exit 1; }
fi
if ! prometheus=$(deploy/prometheus/build.sh --print-path 2>/dev/null); then
    say "building Prometheus (deploy/prometheus/build.sh; once, a few minutes)"
    prometheus=$(deploy/prometheus/build.sh) || { echo "local stack: no Prometheus" >&2; exit 1; }
fi
# A clean environment: the binary would otherwise pick up OTEL_* variables meant for others.
base_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}")

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
say "starting Prometheus (deploy/prometheus/prometheus.yml and rules.yml, scraping the Collector)"
# The shipped configuration, with the Collector's loopback address and the rules file's path.
sed -e "s|\"collector:8889\"|\"$HOST:$COLLECTOR_PROMETHEUS_PORT\"|" -e "s|^  - rules.yml$|  - $REPO/deploy/prometheus/rules.yml|" \
    deploy/prometheus/prometheus.yml > "$STACK_DIR/prometheus.yml"
# created-timestamp-zero-ingestion: a counter's start time (the Collector's exporter gives it) becomes a
# 0 sample, so rate() sees a program's first process end, not only those after it (docs/operations.md).
start prometheus "${base_env[@]}" "$prometheus/prometheus" --config.file="$STACK_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROMETHEUS_DATA_DIR" --web.listen-address="$HOST:$PROMETHEUS_PORT" \
    --enable-feature=created-timestamp-zero-ingestion
wait_for prometheus "$PROMETHEUS_PORT"

say "starting Jaeger all-in-one (deploy/jaeger/all-in-one.yaml, traces kept in Badger: badger.yaml; Monitor tab: monitor.yaml)"
start jaeger "${base_env[@]}" JAEGER_LISTEN_HOST=$HOST \
    JAEGER_OTLP_GRPC_PORT="$JAEGER_OTLP_GRPC_PORT" JAEGER_OTLP_HTTP_PORT="$JAEGER_OTLP_HTTP_PORT" \
    JAEGER_QUERY_HTTP_PORT="$JAEGER_QUERY_HTTP_PORT" JAEGER_QUERY_GRPC_PORT="$JAEGER_QUERY_GRPC_PORT" \
    JAEGER_UI_ASSETS="$ui" JAEGER_DATA_DIR="$JAEGER_DATA_DIR" JAEGER_RETENTION="$JAEGER_RETENTION" \
    PROMETHEUS_URL="http://$HOST:$PROMETHEUS_PORT" \
    "$jaeger" --config "file:$REPO/deploy/jaeger/all-in-one.yaml" --config "file:$REPO/deploy/jaeger/badger.yaml" \
    --config "file:$REPO/deploy/jaeger/monitor.yaml"
wait_for jaeger "$JAEGER_QUERY_HTTP_PORT"
wait_for jaeger "$JAEGER_OTLP_GRPC_PORT"

say "starting the Collector (collector-config.yaml, under the same binary)"
start collector "${base_env[@]}" COLLECTOR_LISTEN_HOST=$HOST \
    COLLECTOR_OTLP_GRPC_PORT="$COLLECTOR_OTLP_GRPC_PORT" COLLECTOR_OTLP_HTTP_PORT="$COLLECTOR_OTLP_HTTP_PORT" \
    COLLECTOR_TELEMETRY_PORT="$COLLECTOR_TELEMETRY_PORT" COLLECTOR_PROMETHEUS_PORT="$COLLECTOR_PROMETHEUS_PORT" \
    COLLECTOR_SPANMETRICS_INTERVAL="${COLLECTOR_SPANMETRICS_INTERVAL:-15s}" \
    JAEGER_OTLP_ENDPOINT="$HOST:$JAEGER_OTLP_GRPC_PORT" \
    "$jaeger" --config "file:$REPO/collector-config.yaml"
wait_for collector "$COLLECTOR_OTLP_GRPC_PORT"

say "starting otelproc run"
start otelproc env PYTHONPATH="$REPO" OTELPROC_STATE_FILE="$STATE_FILE" OTELPROC_PIN_DIR="$PIN_DIR" \
    "$python" -m otelproc run --otlp-endpoint "http://$HOST:$COLLECTOR_OTLP_GRPC_PORT" --otlp-protocol grpc
for _ in $(seq 120); do
    grep -q "otelproc: ready" "$STACK_DIR/otelproc.log" && break
    alive otelproc || fail "otelproc exited: $(tail -n 3 "$STACK_DIR/otelproc.log" 2>/dev/null)"
    sleep 0.5
done
grep -q "otelproc: ready" "$STACK_DIR/otelproc.log" || fail "otelproc was not ready within 60 s"

say "starting the demo app (demo/app.py under opentelemetry-instrument uvicorn, 2 workers)"
start demo env PYTHONPATH="$REPO" OTEL_SERVICE_NAME=demo OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=otelproc \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://$HOST:$COLLECTOR_OTLP_GRPC_PORT" OTEL_EXPORTER_OTLP_PROTOCOL=grpc \
    OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=otlp OTEL_LOGS_EXPORTER=none OTEL_BSP_SCHEDULE_DELAY=1000 \
    PYTHONUNBUFFERED=1 \
    "$instrument" "$python" -m uvicorn app:app --app-dir "$REPO/demo" --host $HOST --port "$DEMO_PORT" --workers 2
wait_for demo "$DEMO_PORT"
up=true

cat <<EOF

The local stack is up (logs and pid files in $STACK_DIR):
  demo app          http://$HOST:$DEMO_PORT/   also /work, /spawn, /fail, /crash
  Jaeger UI         http://$HOST:$JAEGER_QUERY_HTTP_PORT/   (service demo; its API: docs/correlation.md)
  Monitor tab       http://$HOST:$JAEGER_QUERY_HTTP_PORT/monitor   (span kind Internal: the demo's processes)
  Prometheus        http://$HOST:$PROMETHEUS_PORT/api/v1/alerts   (its API: this build has no web UI; rules: deploy/prometheus/rules.yml)
  Jaeger's traces   $JAEGER_DATA_DIR   (kept for $JAEGER_RETENTION: JAEGER_RETENTION)
  Collector         OTLP $HOST:$COLLECTOR_OTLP_GRPC_PORT (gRPC), $HOST:$COLLECTOR_OTLP_HTTP_PORT (HTTP)
  otelproc          $STACK_DIR/otelproc.log
Try:  curl -s $HOST:$DEMO_PORT/spawn; sleep 5; curl -s $HOST:$JAEGER_QUERY_HTTP_PORT/api/services
Stop: deploy/local/down.sh
EOF
