#!/usr/bin/env bash
# vmm-img bench vs qemu-img bench, same work, same machine, one run: 4 KiB
# reads and writes at queue depth 1 and 32 with -t none (O_DIRECT), on a raw
# and a qcow2 image of 1 GiB on a real disk (not tmpfs: O_DIRECT), both fully
# allocated with data so that every run does the same (no cluster allocation).
# qemu-img bench has no random mode: requests advance by a step (-S) of
# 4096 * 40503 bytes modulo the image size, an odd number of 4 KiB blocks, so
# consecutive requests land about 158 MiB apart and a run visits every block
# once before repeating: the access pattern of random I/O without a seed.
# Each row is the best of 3 runs per tool (wall time), after one warm-up run
# each, the tools alternating; prints
# "ratio = qemu_time / our_time" (> 1: vmm-img is faster).
#   bench/bench-img-bench.sh [BIN_DIR] [WORK_DIR]
#   BENCH_COUNT_QD1 (20000), BENCH_COUNT_QD32 (100000), BENCH_RUNS (3)
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
W=${2:-/var/tmp/vmm-bench}
COUNT1=${BENCH_COUNT_QD1:-20000}
COUNT32=${BENCH_COUNT_QD32:-100000}
RUNS=${BENCH_RUNS:-3}
STEP=$((4096 * 40503))
VMM_IMG=$BIN/vmm-img

[ -x "$VMM_IMG" ] || { echo "vmm-img not built: $VMM_IMG" >&2; exit 77; }
command -v qemu-img >/dev/null || { echo "qemu-img not installed (qemu-utils)" >&2; exit 77; }
mkdir -p "$W"
if [ "$(stat -f -c %T "$W")" = tmpfs ]; then
    echo "$W is on tmpfs: O_DIRECT needs a real disk; pass another WORK_DIR" >&2; exit 1
fi

IMG_RAW=$W/bench-1G.raw
IMG_QCOW2=$W/bench-1G.qcow2
if [ ! -f "$IMG_RAW" ]; then
    echo "generating $IMG_RAW ..." >&2
    openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' 7)" -iv 0 </dev/zero 2>/dev/null |
        head -c $((1 << 30)) >"$IMG_RAW.tmp" || true   # openssl ends on SIGPIPE
    mv "$IMG_RAW.tmp" "$IMG_RAW"
fi
[ -f "$IMG_QCOW2" ] || qemu-img convert -f raw -O qcow2 "$IMG_RAW" "$IMG_QCOW2"

now() { date +%s.%N; }
time_once() {
    local s e
    s=$(now); "$@" >/dev/null; e=$(now)
    echo "$e - $s" | bc -l
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

printf '%-34s %10s %10s %8s\n' "bench 4 KiB, -t none" "qemu-img" "vmm-img" "ratio"
row() { # NAME FORMAT IMAGE COUNT DEPTH [-w]
    local name=$1 fmt=$2 img=$3 count=$4 depth=$5 ours theirs iops; shift 5
    local args=(bench -f "$fmt" -t none -s 4096 -S "$STEP" -c "$count" -d "$depth" "$@" "$img")
    # One warm-up each, then the tools alternate so that drift in the disk's
    # state hits both alike.
    time_once qemu-img "${args[@]}" >/dev/null
    time_once "$VMM_IMG" "${args[@]}" >/dev/null
    theirs= ours=
    for _ in $(seq "$RUNS"); do
        theirs=$(min "$theirs" "$(time_once qemu-img "${args[@]}")")
        ours=$(min "$ours" "$(time_once "$VMM_IMG" "${args[@]}")")
    done
    iops=$(echo "$count / $ours" | bc)
    printf '%-34s %9.3fs %9.3fs %8.2f  (vmm-img %s IOPS)\n' "$name" "$theirs" "$ours" \
        "$(echo "$theirs / $ours" | bc -l)" "$iops"
}
for fmt in raw qcow2; do
    img=$IMG_RAW; [ "$fmt" = qcow2 ] && img=$IMG_QCOW2
    row "$fmt read  qd1  ($COUNT1 req)" "$fmt" "$img" "$COUNT1" 1
    row "$fmt read  qd32 ($COUNT32 req)" "$fmt" "$img" "$COUNT32" 32
    row "$fmt write qd1  ($COUNT1 req)" "$fmt" "$img" "$COUNT1" 1 -w
    row "$fmt write qd32 ($COUNT32 req)" "$fmt" "$img" "$COUNT32" 32 -w
done
