#!/usr/bin/env bash
# QMP round trips: the same client (vmmctl, interactive) sends N query-status
# commands to vmmd and to QEMU 7.2 (qemu-system-x86_64 -M none), in one run.
# Prints both times and the ratio qemu_time / vmmd_time (> 1: vmmd is faster).
#   bench/bench-qmp.sh [BIN_DIR] [N]
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
N=${2:-2000}
T=$(mktemp -d /tmp/bench-qmp.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT

wait_sock() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
for _ in $(seq "$N"); do echo query-status; done >"$T/cmds"
run() { # SOCK -> seconds for N round trips
  local s e
  s=$(date +%s.%N)
  "$BIN/vmmctl" -s "$1" -i <"$T/cmds" >/dev/null
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}

"$BIN/vmmd" -helpers "" -qmp "unix:$T/vmmd.sock,server=on,wait=off" 2>/dev/null &
PIDS+=($!)
qemu-system-x86_64 -M none -display none -nodefaults -qmp "unix:$T/qemu.sock,server=on,wait=off" &
PIDS+=($!)
wait_sock "$T/vmmd.sock"; wait_sock "$T/qemu.sock"
best_of_3() { # SOCK -> the fastest of three runs
  local best=
  for _ in 1 2 3; do
    local t
    t=$(run "$1")
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
ours=$(best_of_3 "$T/vmmd.sock")
theirs=$(best_of_3 "$T/qemu.sock")
printf 'QMP %d x query-status: vmmd %.3f s, qemu %.3f s, ratio %.2f\n' "$N" "$ours" "$theirs" \
  "$(echo "$theirs / $ours" | bc -l)"
