#!/bin/bash
# rig-job.sh --state DIR [--timeout S] [--cwd DIR] [--env K=V]... [--name N] -- COMMAND...
#
# Runs COMMAND as a job of the rig fixture whose state is in DIR (see
# rig-fixture.sh), prints its output and exits with its status. Where the
# fixture found that the host's /dev/kvm boots Linux, the job runs right here
# instead. Without a fixture (no DIR/status) it boots a one-shot L1 (rig-run.sh).
#
# The job sees RIG_MODE (l1 or host) and RIG_KIT (the kit directory) in its
# environment, besides the --env values; its environment is otherwise clean.
# Exit status: COMMAND's, or 77 the fixture was skipped, 124 timeout,
# 125 L1 is down or never came up. When L1 dies while the job runs (or
# before), the job starts a new L1 and runs once more (docs/rig.md).
set -uo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$RIG_DIR/rig-lib.sh"

ORIG_ARGS=("$@")
STATE=""
TIMEOUT=${VMM_RIG_TIMEOUT:-600}
CWD=$PWD
ENVS=()
NAME=job
while [ $# -gt 0 ]; do
    case "$1" in
        --state) STATE=$2; shift 2 ;;
        --timeout) TIMEOUT=$2; shift 2 ;;
        --cwd) CWD=$2; shift 2 ;;
        --env) ENVS+=("$2"); shift 2 ;;
        --name) NAME=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "rig-job: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
[ -n "$STATE" ] && [ -d "$STATE" ] && STATE=$(realpath "$STATE")

JOB_ID="$(echo "$NAME" | tr -c 'A-Za-z0-9_.-' '_')-$$-$RANDOM"

# The job's environment on the host mirrors the one /init gives it in L1.
run_on_host() {
    local kit=$1 dir="$STATE/jobs/$JOB_ID"
    shift
    rig_write_job "$dir" "$CWD" "$TIMEOUT" ENVS -- "$@"
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME="${HOME:-/root}" TERM=dumb LANG=C.UTF-8 RIG_MODE=host RIG_KIT="$kit" \
        timeout -s KILL "$TIMEOUT" /bin/sh "$dir/job.sh" < /dev/null
    local rc=$?
    [ $rc = 137 ] && rig_log "job $JOB_ID: killed after ${TIMEOUT}s"
    rm -rf "$dir"
    exit $rc
}

run_one_shot() {
    if [ "${VMM_RIG_FORCE_L1:-0}" != 1 ]; then
        local kit
        kit=$(bash "$RIG_DIR/build-kit.sh" --quiet 2>/dev/null) &&
            bash "$RIG_DIR/probe-host-kvm.sh" --kit "$kit" >/dev/null &&
            { STATE=$(mktemp -d "${TMPDIR:-/tmp}/vmm-rig-job.XXXXXX"); trap 'rm -rf "$STATE"' EXIT
              mkdir -p "$STATE/jobs"; (run_on_host "$kit" "$@"); exit $?; }
    fi
    local args=(--timeout "$TIMEOUT" --cwd "$CWD") kv
    for kv in "${ENVS[@]}"; do
        args+=(--env "$kv")
    done
    exec bash "$RIG_DIR/rig-run.sh" "${args[@]}" -- "$@"
}

# L1's kernel has been seen to die under nested SVM (docs/rig.md): a fresh
# L1 (the fixture's setup again, with the same shares) runs the job once more.
# The lock keeps two jobs from restarting it at the same time.
# The files one lost L1 leaves beside the state directory (its console, its
# CPUs) share one name: CRASH_STEM, set by the first to need it.
set_crash_stem() {
    : "${CRASH_STEM:=$STATE/../rig-crash-$(date +%s)}"
}

restart_l1() {
    local shares=() p
    for p in $(awk '{ print $3 }' "$STATE/shares"); do shares+=(--share "$p"); done
    set_crash_stem
    cp "$STATE/console.log" "$CRASH_STEM.log" 2>/dev/null
    (
        flock 9
        rig_qemu_alive "$(cat "$STATE/qemu.pid" 2>/dev/null)" "$STATE" && exit 0
        bash "$RIG_DIR/rig-fixture.sh" setup --state "$STATE" "${shares[@]}" >&2
    ) 9>"$STATE.restart-lock"
}

l1_down() {
    rig_log "job $JOB_ID: L1 is down ($*)"
    rig_console_tail "$STATE"
    if [ -z "${RIG_JOB_RETRY:-}" ] && [ -f "$STATE/shares" ]; then
        rig_log "job $JOB_ID: starting a new L1 and running the job once more"
        restart_l1 && RIG_JOB_RETRY=1 exec bash "$0" "${ORIG_ARGS[@]}"
        rig_log "job $JOB_ID: the new L1 did not come up"
    fi
    exit $RIG_EXIT_L1_DOWN
}

# L1's kernel has also been seen to lock up for good under nested SVM
# (docs/rig.md): "soft lockup" on its console, both CPUs stuck, no job
# finishing. A lockup that appears after the job started (the console from
# offset C0 on) counts as L1 down: its QEMU, which the fixture started, is
# ended and the job runs once more in a new L1, rather than waiting for the
# job's timeout on a machine that will not answer.
l1_locked_up() { # C0
    tail -c +"$(($1 + 1))" "$STATE/console.log" 2>/dev/null | grep -q "watchdog: BUG: soft lockup"
}

end_locked_up_l1() { # PID WHY
    set_crash_stem
    rig_dump_l1 "$STATE" "$CRASH_STEM-cpus.txt"
    rig_stop_qemu "$1" "$STATE" 0
    l1_down "L1 locked up while the job ran: $2"
}

# L1 has also frozen without a word on its console (one TCG thread at 100 %,
# no job picked up). The agent rewrites $STATE/heartbeat every ~2 s; a count
# that has not changed for this long, by the host's clock, is a frozen L1.
HEARTBEAT_LIMIT=${VMM_RIG_HEARTBEAT_LIMIT:-120}

run_in_l1() {
    local pid q="$STATE/queue/$JOB_ID" dir="$STATE/jobs/$JOB_ID" t0=$SECONDS c0 next_check=0 beat beat_seen
    beat=$(cat "$STATE/heartbeat" 2>/dev/null) beat_seen=$SECONDS
    shift # the kit: L1 gets it through ENVS
    pid=$(cat "$STATE/qemu.pid" 2>/dev/null)
    rig_qemu_alive "$pid" "$STATE" || l1_down "QEMU of $STATE is not running"
    c0=$(stat -c %s "$STATE/console.log" 2>/dev/null || echo 0)
    rig_write_job "$q.tmp" "$CWD" "$TIMEOUT" ENVS -- "$@"
    mv "$q.tmp" "$q.job"
    # The agent kills the job at TIMEOUT; the margin covers its 0.2 s polling.
    while [ ! -f "$dir/rc" ]; do
        rig_qemu_alive "$pid" "$STATE" || l1_down "QEMU exited while job ran"
        if [ "$SECONDS" -ge "$next_check" ]; then
            next_check=$((SECONDS + 5))
            l1_locked_up "$c0" && end_locked_up_l1 "$pid" "soft lockup on its console"
            local now_beat
            now_beat=$(cat "$STATE/heartbeat" 2>/dev/null)
            if [ "$now_beat" != "$beat" ]; then
                beat=$now_beat beat_seen=$SECONDS
            elif [ -n "$beat" ] && [ $((SECONDS - beat_seen)) -ge "$HEARTBEAT_LIMIT" ]; then
                end_locked_up_l1 "$pid" "its agent's heartbeat stopped $((SECONDS - beat_seen)) s ago"
            fi
        fi
        if [ $((SECONDS - t0)) -ge $((TIMEOUT + 30)) ]; then
            cat "$dir/output" 2>/dev/null
            rig_log "job $JOB_ID: no result after $((SECONDS - t0))s"
            exit $RIG_EXIT_TIMEOUT
        fi
        sleep 0.1
    done
    cat "$dir/output"
    local rc
    rc=$(cat "$dir/rc")
    [ "$rc" = 137 ] && rig_log "job $JOB_ID: killed after ${TIMEOUT}s"
    [ -n "${VMM_RIG_KEEP_JOBS:-}" ] || rm -rf "$dir"
    exit "$rc"
}

STATUS=""
[ -n "$STATE" ] && [ -f "$STATE/status" ] && STATUS=$(cat "$STATE/status")
KIT=$(cat "$STATE/kit" 2>/dev/null)
ENVS=("RIG_KIT=$KIT" "${ENVS[@]}")
case "$STATUS" in
    "") ENVS=("${ENVS[@]:1}"); run_one_shot "$@" ;;
    L1) run_in_l1 "$KIT" "$@" ;;
    HOST) ENVS=("${ENVS[@]:1}"); run_on_host "$KIT" "$@" ;;
    SKIP*) echo "rig: SKIP: ${STATUS#SKIP }" >&2; exit $RIG_EXIT_SKIP ;;
    FAIL*) rig_log "fixture failed: ${STATUS#FAIL }"; exit $RIG_EXIT_L1_DOWN ;;
    *) rig_log "unknown fixture status '$STATUS' in $STATE/status"; exit 1 ;;
esac
