#!/usr/bin/env bash
# Sequential 9P throughput, vmmd vs QEMU, paired and order-balanced, in one
# rig L1 (the same guest, kernel, export and msize as bench-9p.sh):
#   bash tests/rig/rig-run.sh --timeout 1800 -- bash bench/bench-9p-seq.sh build/bin [ROUNDS]
# A discarded vmmd guest goes first, writing and reading the same size (the
# first big sequential write of a fresh L1 runs slower, whichever VMM makes
# it; a 32 MiB one did not take that away). Then ROUNDS rounds (default 8),
# each one boot per VMM: $MIB MiB written (then fsync) and read twice
# through the share.
# vmmd goes first in odd rounds and QEMU in even ones, so a drift of the L1
# over the run favours neither. Prints each round's MB/s and ratio = vmmd /
# QEMU, then per operation the geometric mean of the ratios with a 95 %
# confidence interval (Student's t on the log ratios). bench-9p.sh measures
# once per VMM; this is the measurement that can tell a few per cent.
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
ROUNDS=${2:-8}
MIB=${BENCH_9P_MIB:-128}
MSIZE=${BENCH_9P_MSIZE:-512000}
HERE=$(cd "$(dirname "$0")" && pwd)
: "${RIG_KIT:?RIG_KIT is not set: run this through tests/rig/rig-run.sh}"
. "$RIG_KIT/kit.env"
. "$HERE/guest-lib.sh"
[ "$ROUNDS" -ge 2 ] || { echo "bench-9p-seq: ROUNDS must be 2 or more" >&2; exit 2; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 is missing"; exit 77; }
T=$(mktemp -d /tmp/bench-9p-seq.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -KILL -- -"$PID" 2>/dev/null
  mountpoint -q "$T/fs" 2>/dev/null && umount "$T/fs"
  rm -rf "$T"
}
trap cleanup EXIT
die() { echo "bench-9p-seq: $*" >&2; exit 1; }

gcc -static -O2 -o "$T/guest-fs" "$HERE/guest-fs.c"
guest_export_fs "$T" $((MIB * 2 + 512)) || die "loop mount of the ext4 image"
E=$T/fs/export

seq_lines() { # MIB: the guest's workload
  printf '/gfs seqwrite /mnt/big %s\n/gfs seqread /mnt/big %s\n/gfs seqread /mnt/big %s\n' "$1" "$1" "$1"
  # shellcheck disable=SC2016 # $B is the guest's
  printf '$B rm -f /mnt/big\n'
}
seq_lines "$MIB" | guest_9p_disk "$T/seq.raw" "$T/guest-fs" "$MSIZE"

boot() { # NAME DISK: one guest, its console in $T/NAME.out
  local cmd
  guest_9p_cmd cmd "$1" "$BIN" "$2" "$E"
  rm -rf "$E"; mkdir "$E"; fstrim "$T/fs" 2>/dev/null || true
  setsid timeout 600 "${cmd[@]}" </dev/null >"$T/$1.out" 2>&1 &
  PID=$!
  wait "$PID" || true
  PID=
  tr -d '\r' <"$T/$1.out" >"$T/$1.tmp" && mv "$T/$1.tmp" "$T/$1.out"
}

# measure NAME: "WRITE READ" in MB/s (READ: the mean of the two reads), after
# up to three boots when the rig's nested SVM faults the guest (docs/rig.md).
measure() {
  local attempt
  for attempt in 1 2 3; do
    boot "$1" "$T/seq.raw"
    if [ "$(grep -ac '^GUEST-FS seq' "$T/$1.out")" = 3 ]; then
      awk '/^GUEST-FS seq/ { r = $3 / 1e6 / ($4 / 1e9); if ($2 == "seqwrite") w = r; else { s += r; n++ } }
           END { printf "%.1f %.1f\n", w, s / n }' "$T/$1.out"
      return 0
    fi
    guest_faulted "$T/$1.out" "$1" || { tail -20 "$T/$1.out" >&2; die "$1: the workload failed"; }
    echo "$1: the guest faulted (the rig's nested SVM, docs/rig.md); attempt $attempt of 3 lost:" >&2
    show_fault "$T/$1.out"
  done
  die "$1: three guests faulted in a row"
}

boot vmmd "$T/seq.raw"
echo "L1: $(nproc) CPUs; warm-up guest (discarded): $(grep -ac '^GUEST-FS seq' "$T/vmmd.out") of 3 workloads ran"
echo "$MIB MiB per boot, msize $MSIZE; MB/s vmmd / QEMU (read: the mean of two reads)"
printf '%-6s %-6s %22s %7s %22s %7s\n' round first write ratio read ratio
: >"$T/ratios"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then
    first=vmmd; v=$(measure vmmd); q=$(measure qemu)
  else
    first=qemu; q=$(measure qemu); v=$(measure vmmd)
  fi
  read -r vw vr <<<"$v"
  read -r qw qr <<<"$q"
  rw=$(echo "$vw / $qw" | bc -l)
  rr=$(echo "$vr / $qr" | bc -l)
  printf '%-6s %-6s %10s / %-9s %7.2f %10s / %-9s %7.2f\n' "$round" "$first" "$vw" "$qw" "$rw" "$vr" "$qr" "$rr"
  echo "$rw $rr" >>"$T/ratios"
done
# Geometric mean and 95 % interval: t quantiles for 1-30 degrees of freedom.
awk 'BEGIN { split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 " \
                   "2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", tq, " ") }
     { for (i = 1; i <= 2; i++) { x = log($i); s[i] += x; ss[i] += x * x } n++ }
     END {
       split("write read", name, " ")
       for (i = 1; i <= 2; i++) {
         m = s[i] / n; sd = sqrt((ss[i] - n * m * m) / (n - 1)); h = (n - 1 <= 30 ? tq[n - 1] : 1.96) * sd / sqrt(n)
         printf "%s: vmmd / QEMU %.3f (95 %% interval %.3f-%.3f, %d rounds)\n", name[i], exp(m), exp(m - h), exp(m + h), n
       }
     }' "$T/ratios"
