#!/usr/bin/env bash
# vmm-img convert vs qemu-img convert, same work, same machine, one run:
# raw->qcow2, qcow2->raw, raw->qcow2 compressed (zlib and zstd), on a 1 GiB image
# with realistic content: about half of it zero (holes), the other half data
# extents of 4 KiB..4 MiB, three quarters random bytes and one quarter text
# (compressible). The source is generated once from a seed and kept.
# Each row is the best of 3 runs per tool, the tools alternating; the outputs of both tools must
# have the same content (qemu-img compare), or the row is marked WRONG.
# Prints "ratio = qemu_time / our_time" per row (> 1: vmm-img is faster).
#   bench/bench-convert.sh [BIN_DIR] [WORK_DIR]
#   BIN_DIR: where vmm-img is (build/bin); WORK_DIR: a directory on a real disk
#   (/var/tmp/vmm-bench); BENCH_SEED (1), BENCH_SIZE_MB (1024), BENCH_RUNS (3)
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
W=${2:-/var/tmp/vmm-bench}
SEED=${BENCH_SEED:-1}
SIZE_MB=${BENCH_SIZE_MB:-1024}
RUNS=${BENCH_RUNS:-3}
VMM_IMG=$BIN/vmm-img

[ -x "$VMM_IMG" ] || { echo "vmm-img not built: $VMM_IMG" >&2; exit 77; }
command -v qemu-img >/dev/null || { echo "qemu-img not installed (qemu-utils)" >&2; exit 77; }
command -v openssl >/dev/null || { echo "openssl is needed to generate the seeded content" >&2; exit 77; }
mkdir -p "$W"
SRC=$W/src-${SIZE_MB}M-seed$SEED.raw

# The seeded source: pools of random bytes and of text, copied into extents.
make_source() {
    local pool=$W/pool.bin text=$W/text.bin tmp=$SRC.tmp off=0 size=$((SIZE_MB << 20)) len src
    openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$SEED")" -iv 0 </dev/zero 2>/dev/null |
        head -c $((64 << 20)) >"$pool" || true   # openssl ends on SIGPIPE
    base64 -w 76 <"$pool" | head -c $((64 << 20)) >"$text" || true
    rm -f "$tmp"; truncate -s "$size" "$tmp"
    RANDOM=$SEED
    while [ "$off" -lt "$size" ]; do
        len=$(( (1 + RANDOM % 1024) * 4096 ))
        [ $((off + len)) -gt "$size" ] && len=$((size - off))
        if [ $((RANDOM % 2)) = 1 ]; then
            src=$pool; [ $((RANDOM % 4)) = 0 ] && src=$text
            dd if="$src" of="$tmp" bs=1M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc status=none \
                skip=$(( (RANDOM % 16) << 20 )) seek="$off" count="$len"
        fi
        off=$((off + len))
    done
    rm -f "$pool" "$text"
    mv "$tmp" "$SRC"
}
[ -f "$SRC" ] || { echo "generating $SRC (seed $SEED) ..." >&2; make_source; }
[ -f "$SRC.qcow2" ] || qemu-img convert -f raw -O qcow2 "$SRC" "$SRC.qcow2"

now() { date +%s.%N; }
time_once() { # OUTPUT COMMAND...: seconds of one run into OUTPUT, then kept as keep-*
    local out=$1 s e; shift
    rm -f "$out" "${out/out-/keep-}"; sync
    s=$(now); "$@" >/dev/null; e=$(now)
    mv "$out" "${out/out-/keep-}"  # so that no run finds an output in its way
    echo "$e - $s" | bc -l
}
min() { if [ -z "$1" ] || [ "$(echo "$2 < $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

printf '%-28s %10s %10s %8s  %s\n' "convert ($SIZE_MB MiB)" "qemu-img" "vmm-img" "ratio" "content"
row() { # NAME OUTFMT ARGS...: the same arguments for both tools
    local name=$1 ofmt=$2 ours theirs same; shift 2
    theirs= ours=
    for _ in $(seq "$RUNS"); do # the tools alternate, so drift hits both alike
        theirs=$(min "$theirs" "$(time_once "$W/out-qemu.$ofmt" qemu-img convert "$@" "$W/out-qemu.$ofmt")")
        ours=$(min "$ours" "$(time_once "$W/out-ours.$ofmt" "$VMM_IMG" convert "$@" "$W/out-ours.$ofmt")")
    done
    if qemu-img compare -q -f "$ofmt" -F "$ofmt" "$W/keep-qemu.$ofmt" "$W/keep-ours.$ofmt" 2>/dev/null; then
        same=identical
    else
        same=WRONG
    fi
    printf '%-28s %9.3fs %9.3fs %8.2f  %s\n' "$name" "$theirs" "$ours" "$(echo "$theirs / $ours" | bc -l)" "$same"
    rm -f "$W/keep-qemu.$ofmt" "$W/keep-ours.$ofmt"
}
row "raw -> qcow2" qcow2 -f raw -O qcow2 "$SRC"
row "qcow2 -> raw" raw -f qcow2 -O raw "$SRC.qcow2"
row "raw -> qcow2 -c (zlib)" qcow2 -c -f raw -O qcow2 "$SRC"
row "raw -> qcow2 -c (zstd)" qcow2 -c -f raw -O qcow2 -o compression_type=zstd "$SRC"
row "qcow2 -> qcow2" qcow2 -f qcow2 -O qcow2 "$SRC.qcow2"
