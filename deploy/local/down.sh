#!/usr/bin/env bash
# Stops the local stack deploy/local/up.sh started, and only that: the demo first (its
# processes' spans still go out), then otelproc (it flushes), the Collector, Jaeger.
# Logs stay in the stack's directory for reading afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
source deploy/local/common.sh

stop_all
# A probe pinned in bpffs outlives otelproc by design (it keeps recording for the next one):
# the stack is going away, so it goes too (`otelproc detach`, with the stack's pin directory).
echo "local stack: removing otelproc's pinned probe"
OTELPROC_STATE_FILE="$STATE_FILE" OTELPROC_PIN_DIR="$PIN_DIR" PYTHONPATH=$PWD "${PYTHON:-python3}" -m otelproc detach
echo "local stack: down (logs kept in $STACK_DIR)"
