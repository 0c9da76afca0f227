#!/usr/bin/env bash
# Stops the local stack deploy/local/up.sh started, and only that: the sessions its pid files
# record, the demo first (its processes' spans still go out), then otelproc (it flushes), the
# Collector, Jaeger; then otelproc's pinned probe. What is already gone is said, a line each,
# and left be. Exits 0 once nothing of the stack is left; else 1, saying what is.
# Logs stay in the stack's directory for reading afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/common.sh

if [[ -d $STACK_DIR ]]; then lock; fi
recorded_any=false
for name in "${STACK[@]}"; do
    if recorded "$name"; then recorded_any=true; fi
done
$recorded_any || note "no pid files in $STACK_DIR: no process of the stack to stop"
status=0
stop_all || status=1
# The probe pinned in bpffs outlives otelproc by design (it keeps recording for the next one):
# the stack is going away, so it goes too, even when otelproc was gone before.
detach || status=1
if ((status != 0)); then
    left=()
    for name in "${STACK[@]}"; do
        mapfile -t pids < <(members "$name")
        if ((${#pids[@]})); then left+=("$name (pid $(list "${pids[@]}"))"); fi
    done
    if ((${#left[@]})); then
        note "not down: $(list "${left[@]}") still running (above: why); deploy/local/down.sh tries again" >&2
    else
        note "not down: otelproc's pinned probe may remain in $PIN_DIR (above: why); deploy/local/down.sh tries again" >&2
    fi
    exit 1
fi
note "down (logs kept in $STACK_DIR)"
