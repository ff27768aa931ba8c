#!/bin/bash
# rig-run.sh [--timeout S] [--cwd DIR] [--env K=V]... [--share DIR]... -- COMMAND...
#
# Boots a throw-away L1 Linux under QEMU TCG (AMD SVM + NPT emulated, so L1 has a
# real /dev/kvm), runs COMMAND chrooted into the host's root (read-only, with the
# repository and every --share DIR writable at their own paths, fresh tmpfs /tmp),
# streams its output here and exits with its exit status.
#
# Exit status: COMMAND's, or 77 prerequisite missing (SKIP), 124 timeout,
# 125 L1 did not come up, died or froze (no heartbeat for
# VMM_RIG_HEARTBEAT_LIMIT s, default 120) before COMMAND finished.
set -uo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$RIG_DIR/rig-lib.sh"

TIMEOUT=${VMM_RIG_TIMEOUT:-600}
CWD=$PWD
ENVS=()
SHARES=("$RIG_SRC_ROOT")
KEEP=0

usage() { sed -n '2,12p' "$0" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) TIMEOUT=$2; shift 2 ;;
        --cwd) CWD=$2; shift 2 ;;
        --env) ENVS+=("$2"); shift 2 ;;
        --share) SHARES+=("$2"); shift 2 ;;
        --keep) KEEP=1; shift ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "rig-run: unknown argument '$1'" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || usage

rig_check_qemu
KIT=$(rig_build_kit) || exit $?
ENVS=("RIG_KIT=$KIT" "${ENVS[@]}")

STATE=$(mktemp -d "${TMPDIR:-/tmp}/vmm-rig.XXXXXX")
QEMU_PID=""
TAIL_PID=""

cleanup() {
    if [ -n "$QEMU_PID" ]; then
        kill -KILL "$QEMU_PID" 2>/dev/null
        wait "$QEMU_PID" 2>/dev/null
    fi
    if [ -n "$TAIL_PID" ]; then
        kill "$TAIL_PID" 2>/dev/null
        wait "$TAIL_PID" 2>/dev/null
    fi
    if [ "$KEEP" = 1 ]; then
        rig_log "kept $STATE"
    else
        rm -rf "$STATE"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rig_write_config "$STATE" run "$KIT" "${SHARES[@]}"
rig_write_job "$STATE/run" "$CWD" 0 ENVS -- "$@"
: > "$STATE/run/output"
rig_qemu_args "$STATE" "$KIT"

T0=$SECONDS
"${RIG_QEMU_ARGS[@]}" > "$STATE/qemu.log" 2>&1 < /dev/null &
QEMU_PID=$!
tail -n +1 -F "$STATE/run/output" 2>/dev/null &
TAIL_PID=$!

# L1 rewrites $STATE/heartbeat every ~2 s while the command runs. A count
# unchanged this long by the host's clock is an L1 whose timers stopped
# (docs/rig.md): it is ended at once instead of at the timeout.
HEARTBEAT_LIMIT=${VMM_RIG_HEARTBEAT_LIMIT:-120}
BEAT="" BEAT_SEEN=$SECONDS NEXT_CHECK=0
heartbeat_stopped() {
    [ "$SECONDS" -ge "$NEXT_CHECK" ] || return 1
    NEXT_CHECK=$((SECONDS + 5))
    local now
    now=$(cat "$STATE/heartbeat" 2>/dev/null)
    if [ "$now" != "$BEAT" ]; then
        BEAT=$now BEAT_SEEN=$SECONDS
        return 1
    fi
    [ -n "$BEAT" ] && [ $((SECONDS - BEAT_SEEN)) -ge "$HEARTBEAT_LIMIT" ]
}

T_BOOTED=""
now_ms() { date +%s%3N; }
T0_MS=$(now_ms)
while kill -0 "$QEMU_PID" 2>/dev/null && [ ! -f "$STATE/run/rc" ]; do
    [ -z "$T_BOOTED" ] && [ -f "$STATE/booted" ] && T_BOOTED=$(($(now_ms) - T0_MS))
    if [ $((SECONDS - T0)) -ge "$TIMEOUT" ]; then
        rig_log "timeout: command did not finish within ${TIMEOUT}s"
        rig_console_tail "$STATE"
        exit $RIG_EXIT_TIMEOUT
    fi
    if heartbeat_stopped; then
        rig_log "L1 froze: its heartbeat stopped $((SECONDS - BEAT_SEEN)) s ago"
        rig_dump_l1 "$STATE" "$STATE.cpus.txt"
        rig_console_tail "$STATE"
        exit $RIG_EXIT_L1_DOWN
    fi
    sleep 0.2
done
T_RC=$(($(now_ms) - T0_MS))
# QEMU exits on its own right after rc appears (poweroff); give it a moment.
for ((i = 0; i < 50; i++)); do
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.1
done
T_EXIT=$(($(now_ms) - T0_MS))
sleep 0.3 # let tail print the last lines

if [ -f "$STATE/run/rc" ]; then
    rc=$(cat "$STATE/run/rc")
    [ -n "${VMM_RIG_VERBOSE:-}" ] &&
        rig_log "timings (ms since QEMU start): L1 ready ${T_BOOTED:-?}, rc ${T_RC}, QEMU exit ${T_EXIT}"
    exit "$rc"
fi
if [ -f "$STATE/l1-failed" ]; then
    rig_log "L1 failed: $(cat "$STATE/l1-failed")"
elif [ -f "$STATE/booted" ]; then
    rig_log "L1 died before the command finished"
else
    rig_log "L1 failed to come up"
fi
cat "$STATE/qemu.log" >&2
rig_console_tail "$STATE"
exit $RIG_EXIT_L1_DOWN
