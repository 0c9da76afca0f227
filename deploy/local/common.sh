# Shared by up.sh and down.sh: where the stack keeps its pid files, and how a recorded
# process is recognised. Each process is started as the leader of a session of its own;
# its pid file holds "PID START_TICKS" (field 22 of /proc/PID/stat), so a pid reused by
# another program is never taken for it, and down.sh stops the whole session: the
# process and every child it started (uvicorn's workers), nothing else.

STACK_DIR=${OTELPROC_LOCAL_DIR:-${TMPDIR:-/tmp}/otelproc-local}
# otelproc's state file and pinned probe: the stack's own, never a production otelproc's.
STATE_FILE=${OTELPROC_STATE_FILE:-$STACK_DIR/state.json}
PIN_DIR=${OTELPROC_PIN_DIR-/sys/fs/bpf/otelproc-local}
STACK=(jaeger collector otelproc demo)  # in start order; down.sh stops them in reverse

start_ticks() { local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; stat=${stat##*) }; set -- $stat; echo "${20}"; }

record() { echo "$2 $(start_ticks "$2")" > "$STACK_DIR/$1.pid"; }

# members NAME: the pids of NAME's session, if it is still the one up.sh started.
members() {
    local file=$STACK_DIR/$1.pid pid ticks now
    [[ -f $file ]] || return 0
    read -r pid ticks < "$file"
    if now=$(start_ticks "$pid"); then
        [[ $now == "$ticks" ]] || return 0  # the pid is another process's now: ours are all gone
    fi
    ps -s "$pid" -o pid=,stat= | awk '$2 !~ /^Z/ { print $1 }'  # zombies have ended already
}

alive() { [[ -n $(members "$1") ]]; }

# stop NAME: SIGTERM to its session, SIGKILL after 30 s; then its pid file goes.
stop() {
    local name=$1 pids
    pids=$(members "$name")
    if [[ -n $pids ]]; then
        echo "local stack: stopping $name"
        kill -TERM $pids 2>/dev/null || true
        for _ in $(seq 60); do
            alive "$name" || break
            sleep 0.5
        done
        pids=$(members "$name")
        if [[ -n $pids ]]; then
            echo "local stack: $name did not stop within 30 s; killing it"
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    rm -f "$STACK_DIR/$name.pid"
}

stop_all() {
    local i
    for ((i = ${#STACK[@]} - 1; i >= 0; i--)); do
        stop "${STACK[i]}"
    done
}
