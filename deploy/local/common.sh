# shellcheck shell=bash
# Shared by up.sh and down.sh: where the stack keeps its pid files, how a recorded
# process is recognised, and how the stack is taken down. Each process is started as the
# leader of a session of its own; its pid file holds "PID START_TICKS" (field 22 of
# /proc/PID/stat), so a pid reused by another program is never taken for it, and the
# whole session is stopped: the process and every child it started (uvicorn's workers),
# nothing else.
#
# Both scripts run under `set -euo pipefail`: a pipeline whose first command finds nothing
# (ps, grep), or a command substitution that fails, would end them half way, silently. So
# every function here returns 0 unless its comment says otherwise, and callers test what
# may fail (`if`, `||`).

STACK_DIR=${OTELPROC_LOCAL_DIR:-${TMPDIR:-/tmp}/otelproc-local}
# otelproc's state file and pinned probe: the stack's own, never a production otelproc's.
STATE_FILE=${OTELPROC_STATE_FILE:-$STACK_DIR/state.json}
PIN_DIR=${OTELPROC_PIN_DIR-/sys/fs/bpf/otelproc-local}
STACK=(prometheus jaeger collector otelproc demo)  # in start order; they are stopped in reverse

note() { echo "local stack: $*"; }

# start_ticks PID: field 22 of /proc/PID/stat; returns 1 when there is no such process.
start_ticks() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    read -ra fields <<< "${stat##*) }"  # after the command name, which may hold spaces
    echo "${fields[19]}"
}

record() {
    local ticks
    ticks=$(start_ticks "$2") || ticks=gone  # it ended already: no process has these ticks
    echo "$2 $ticks" > "$STACK_DIR/$1.pid"
}

recorded() { [[ -f $STACK_DIR/$1.pid ]]; }  # returns 1 when NAME has no pid file

# pid_file NAME: "PID TICKS" from NAME's pid file; nothing when there is none, or it holds no pid.
pid_file() {
    local pid="" ticks=""
    if recorded "$1"; then read -r pid ticks < "$STACK_DIR/$1.pid" 2>/dev/null || true; fi
    if [[ $pid =~ ^[0-9]+$ ]]; then echo "$pid $ticks"; fi
}

# members NAME: the live pids of NAME's session, if it is still the one up.sh started.
# A session's id is its leader's pid, and the kernel does not hand that pid to a new
# process while any member of the session lives: once the leader is gone, `ps -s` still
# finds exactly its remaining members.
members() {
    local pid ticks now
    # Called in a command substitution ($(members NAME)): there, a Ctrl-C or SIGTERM meant for
    # up.sh (sent to its whole process group) does not cut ps short, which would read as "all gone".
    ((BASH_SUBSHELL == 0)) || trap '' INT TERM HUP
    read -r pid ticks <<< "$(pid_file "$1")"
    [[ -n $pid ]] || return 0
    if now=$(start_ticks "$pid") && [[ $now != "$ticks" ]]; then
        return 0  # the pid is another process's now: ours are all gone
    fi
    # One line per thread (-L): a process runs while any of its threads does (its first thread
    # may have ended before the others); zombies have ended. ps exits 1 on an empty session.
    ps -L -s "$pid" -o pid=,stat= 2>/dev/null | awk '$2 !~ /^Z/ && !seen[$1]++ { print $1 }' || true
}

alive() { [[ -n $(members "$1") ]]; }  # returns 1 when none of NAME's session runs

# list A B C: "A, B, C"
list() {
    local out=${1-} item
    (($#)) && shift
    for item; do out+=", $item"; done
    echo "$out"
}

# stop NAME: SIGTERM to its session, SIGKILL after 30 s; says what it did, or that NAME
# was already gone (nothing is said when NAME has no pid file: it was not started).
# The pid file goes once nothing of the session runs; returns 1 (the pid file kept) when
# something still does.
stop() {
    local name=$1 pid _ pids
    recorded "$name" || return 0
    read -r pid _ <<< "$(pid_file "$name")"
    mapfile -t pids < <(members "$name")
    if [[ -z $pid ]]; then
        note "$name's pid file ($STACK_DIR/$name.pid) holds no pid: removing it (if $name runs, stop it by hand)"
    elif ((${#pids[@]} == 0)); then
        note "$name was already gone (pid $pid; its log: $STACK_DIR/$name.log)"
    else
        note "stopping $name (pid $pid)"
        signal_and_wait "$name" TERM 60
        mapfile -t pids < <(members "$name")
        if ((${#pids[@]})); then
            note "$name did not stop within 30 s; killing it"
            signal_and_wait "$name" KILL 20
            mapfile -t pids < <(members "$name")
            if ((${#pids[@]})); then
                note "could not stop $name: pid $(list "${pids[@]}") still running (its pid file stays: $STACK_DIR/$name.pid)"
                return 1
            fi
        fi
    fi
    rm -f "$STACK_DIR/$name.pid"
}

# signal_and_wait NAME SIGNAL TRIES: sends SIGNAL to what runs of NAME's session and waits up to
# TRIES half-seconds for it to be gone. Always returns 0: the caller looks at what is left.
signal_and_wait() {
    local name=$1 signal=$2 tries=$3 pids
    mapfile -t pids < <(members "$name")
    ((${#pids[@]})) || return 0
    kill "-$signal" "${pids[@]}" 2>/dev/null || true
    for _ in $(seq "$tries"); do
        alive "$name" || return 0
        sleep 0.5
    done
    return 0
}

# stop_all: stops the stack, newest first; returns 1 when something could not be stopped.
stop_all() {
    local i failed=0
    for ((i = ${#STACK[@]} - 1; i >= 0; i--)); do
        stop "${STACK[i]}" || failed=1
    done
    return $failed
}

# detach: `otelproc detach` with the stack's pin directory and state file. A probe pinned in
# bpffs outlives otelproc by design (it keeps recording for the next one): the stack is going
# away, so it goes too, whether otelproc stopped now or was gone already. Not while an
# otelproc of the stack still runs (that one keeps it); returns 1 then, or when detach fails.
detach() {
    if alive otelproc; then
        note "otelproc still runs: its pinned probe stays${PIN_DIR:+ in $PIN_DIR}"
        return 1
    fi
    if [[ -n $PIN_DIR ]]; then
        note "removing otelproc's pinned probe ($PIN_DIR)"
    else
        note "removing otelproc's state file (OTELPROC_PIN_DIR is empty: no probe was pinned)"
    fi
    OTELPROC_STATE_FILE="$STATE_FILE" OTELPROC_PIN_DIR="$PIN_DIR" PYTHONPATH="$PWD" \
        "${PYTHON:-python3}" -m otelproc detach || {
        note "otelproc detach failed (above)${PIN_DIR:+: the probe pinned in $PIN_DIR may remain}"
        return 1
    }
}

# lock: one up.sh or down.sh at a time on a stack directory (an up.sh half way through
# would otherwise start what a down.sh has just stopped). The lock is released when the
# script ends; the stack's processes do not hold it (up.sh starts them with fd 8 closed).
lock() {
    exec 8>>"$STACK_DIR/lock"
    flock -n 8 || {
        note "another up.sh or down.sh is at work on $STACK_DIR; wait for it to end (Ctrl-C ends an up.sh, and stops what it started)" >&2
        exit 1
    }
}
