#!/bin/bash
# rig-fixture.sh setup|cleanup --state DIR [--share DIR]...
#
# The ctest fixture "rig": one L1 boot serving many jobs.
#   setup    boots L1 in the background running the job agent (or, when the
#            host's own /dev/kvm boots Linux, records that jobs run on the host)
#            and returns once the agent is ready. Writes DIR/status:
#              L1 | HOST | SKIP <reason> | FAIL <reason>
#   cleanup  asks the agent to power L1 off, kills QEMU by PID if it lingers,
#            and removes DIR/status.
# Jobs are submitted with rig-job.sh --state DIR.
# Exit status: 0 ok, 77 prerequisite missing (SKIP), 1 L1 did not come up.
set -uo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$RIG_DIR/rig-lib.sh"

ACTION=${1:-}
shift || true
STATE=""
SHARES=("$RIG_SRC_ROOT")
BOOT_TIMEOUT=${VMM_RIG_BOOT_TIMEOUT:-180}
while [ $# -gt 0 ]; do
    case "$1" in
        --state) STATE=$2; shift 2 ;;
        --share) SHARES+=("$2"); shift 2 ;;
        *) echo "rig-fixture: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$STATE" ] || { echo "rig-fixture: --state DIR is required" >&2; exit 2; }

set_status() { echo "$*" > "$STATE/status.tmp" && mv "$STATE/status.tmp" "$STATE/status"; }

# stop_l1 [GRACE]: power L1 off through the agent, or kill QEMU after GRACE s.
stop_l1() {
    local pid grace=${1:-${VMM_RIG_STOP_GRACE:-20}}
    pid=$(cat "$STATE/qemu.pid" 2>/dev/null) || return 0
    if rig_qemu_alive "$pid" "$STATE"; then
        touch "$STATE/stop"
        rig_stop_qemu "$pid" "$STATE" "$grace"
    fi
    rm -f "$STATE/qemu.pid"
}

skip_setup() {
    set_status "SKIP $*"
    rig_skip "$*"
}

wait_for_agent() {
    local pid=$1 t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$BOOT_TIMEOUT" ]; do
        [ -f "$STATE/ready" ] && return 0
        [ -f "$STATE/l1-failed" ] && return 1
        rig_qemu_alive "$pid" "$STATE" || return 1
        sleep 0.2
    done
    rig_log "L1 agent not ready after ${BOOT_TIMEOUT}s"
    return 1
}

setup() {
    mkdir -p "$STATE"
    STATE=$(realpath "$STATE")
    stop_l1 # a fixture left behind by an interrupted ctest run
    rm -rf "$STATE"
    mkdir -p "$STATE/queue" "$STATE/jobs"
    set_status "FAIL setup did not finish"

    command -v "$RIG_QEMU" >/dev/null || skip_setup "$RIG_QEMU not installed (apt-get install qemu-system-x86)"
    local kit rc=0
    kit=$(bash "$RIG_DIR/build-kit.sh" --quiet 2> "$STATE/build-kit.log") || rc=$?
    if [ $rc = 77 ]; then
        skip_setup "$(sed -n 's/^rig: SKIP: //p' "$STATE/build-kit.log")"
    elif [ $rc != 0 ]; then
        cat "$STATE/build-kit.log" >&2
        set_status "FAIL kit build failed"
        exit 1
    fi
    echo "$kit" > "$STATE/kit"

    if [ "${VMM_RIG_FORCE_L1:-0}" != 1 ] && bash "$RIG_DIR/probe-host-kvm.sh" --kit "$kit" >/dev/null; then
        set_status HOST
        rig_log "host /dev/kvm boots Linux: jobs run directly on the host"
        return 0
    fi

    rig_write_config "$STATE" agent "$kit" "${SHARES[@]}"
    rig_qemu_args "$STATE" "$kit"
    local t0_ms pid
    t0_ms=$(date +%s%3N)
    # -daemonize: QEMU must not hold ctest's output pipe open after setup exits.
    if ! "${RIG_QEMU_ARGS[@]}" -daemonize -pidfile "$STATE/qemu.pid" > "$STATE/qemu.log" 2>&1 < /dev/null; then
        cat "$STATE/qemu.log" >&2
        set_status "FAIL QEMU did not start"
        exit 1
    fi
    pid=$(cat "$STATE/qemu.pid")
    # ctest kills setup on its timeout; the daemonized QEMU must go with it.
    trap 'stop_l1 0; set_status "FAIL setup interrupted"; exit 1' INT TERM
    if ! wait_for_agent "$pid"; then
        rig_log "L1 failed to come up $(cat "$STATE/l1-failed" 2>/dev/null)"
        cat "$STATE/qemu.log" >&2
        rig_console_tail "$STATE"
        stop_l1 0
        set_status "FAIL L1 failed to come up; see $STATE/console.log"
        exit 1
    fi
    trap - INT TERM
    set_status L1
    rig_log "L1 agent ready in $(($(date +%s%3N) - t0_ms)) ms (QEMU pid $pid, state $STATE)"
}

cleanup() {
    [ -d "$STATE" ] || return 0
    STATE=$(realpath "$STATE")
    stop_l1
    # Without a status, rig-job.sh falls back to a one-shot L1 per job.
    rm -rf "$STATE/queue" "$STATE/status"
    rig_log "L1 stopped; console log kept in $STATE/console.log"
}

case "$ACTION" in
    setup) setup ;;
    cleanup) cleanup ;;
    *) echo "usage: rig-fixture.sh setup|cleanup --state DIR [--share DIR]..." >&2; exit 2 ;;
esac
