#!/usr/bin/env bash
# 9p file serving, in one run, on the same host directory (an ext4 loop image
# in L1, mounted with discard, so that L1's tmpfs gets deleted blocks back):
#   - L2: vmmd -virtfs (virtio-9p in vcpu-worker, fsd) vs qemu-system-x86_64
#     -M microvm -enable-kvm with its own 9p server (-fsdev local + -device
#     virtio-9p-device: microvm has no PCI for -virtfs), both security_model=
#     mapped-xattr, same kernel (the kit's vmlinux), initramfs, 256 MiB, one
#     vCPU; the guest mounts trans=virtio,version=9p2000.L,msize=$MSIZE.
#   - L1: fsd standalone (--listen tcp:127.0.0.1, passthrough) vs diod
#     (-n -N, passthrough), mounted by L1's kernel with trans=tcp, same msize.
# Needs a /dev/kvm that boots Linux: run it in the rig's L1:
#   bash tests/rig/rig-run.sh --timeout 5400 -- bash bench/bench-9p.sh build/bin [RUNS]
# Workloads (bench/guest-fs.c, static, the same binary in L2 and L1), default
# cache mode (none: every operation reaches the server): sequential write
# (then fsync) and read of a $MIB MiB file in 1 MiB requests; create (1 KiB
# each), stat and delete of $FILES files; readdir of a directory of $ENTRIES
# entries (3 listings). Prints one row per workload: both rates and ratio =
# ours / theirs (above 1: ours is faster), best of RUNS (default 1). A
# discarded vmmd guest ($MIB MiB written and read) runs first, and the order
# of the servers alternates from run to run: vmmd, QEMU, fsd, diod, then
# QEMU, vmmd, diod, fsd.
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
RUNS=${2:-1}
MIB=${BENCH_9P_MIB:-256}
FILES=${BENCH_9P_FILES:-5000}
ENTRIES=${BENCH_9P_ENTRIES:-10000}
MSIZE=${BENCH_9P_MSIZE:-512000}
HERE=$(cd "$(dirname "$0")" && pwd)
: "${RIG_KIT:?RIG_KIT is not set: run this through tests/rig/rig-run.sh}"
. "$RIG_KIT/kit.env"
. "$HERE/guest-lib.sh"
command -v diod >/dev/null || { echo "SKIP: diod is missing (apt-get install diod)"; exit 77; }
T=$(mktemp -d /tmp/bench-9p.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -KILL -- -"$PID" 2>/dev/null
  mountpoint -q "$T/mnt" 2>/dev/null && umount -l "$T/mnt"
  mountpoint -q "$T/fs" 2>/dev/null && umount -l "$T/fs"
  rm -rf "$T"
}
trap cleanup EXIT
die() { echo "bench-9p: $*" >&2; exit 1; }

gcc -static -O2 -o "$T/guest-fs" "$HERE/guest-fs.c"
guest_export_fs "$T" $((MIB * 2 + 1024)) || die "loop mount of the ext4 image"
mkdir -p "$T/mnt"
E=$T/fs/export
echo "L1: $(nproc) CPUs, $(free -m | awk '/^Mem:/ { print $2 " MiB RAM, " $7 " MiB available" }'); $MIB MiB file, $FILES files, $ENTRIES entries, msize $MSIZE"

workload() { # PREFIX DIR GFS: the workloads as shell lines, the binary at GFS
  cat <<EOF
\$B grep ' $2 9p ' /proc/mounts | \$B sed 's/^/GUEST-MOUNT /'
$3 seqwrite $2/big $MIB
$3 seqread $2/big $MIB
\$B rm -f $2/big
$3 create $2/small $FILES
$3 stat $2/small $FILES
$3 delete $2/small $FILES
$3 mkfiles $2/dir $ENTRIES
$3 readdir $2/dir 3
EOF
}

workload guest /mnt /gfs | guest_9p_disk "$T/script.raw" "$T/guest-fs" "$MSIZE"
# shellcheck disable=SC2016 # $B is the guest's
printf '/gfs seqwrite /mnt/warm %s\n/gfs seqread /mnt/warm %s\n$B rm -f /mnt/warm\n' "$MIB" "$MIB" |
  guest_9p_disk "$T/warm.raw" "$T/guest-fs" "$MSIZE"
NOPS=7   # GUEST-FS lines per run

fresh_export() { rm -rf "$E"; mkdir "$E"; fstrim "$T/fs" 2>/dev/null || true; }

check_run() { # NAME: 1 when the workload did not finish
  [ "$(grep -ac "^GUEST-FS" "$T/$1.out")" = "$NOPS" ] || { echo "$1: the workload failed" >&2; tail -20 "$T/$1.out" >&2; return 1; }
  grep -a "^GUEST-MOUNT" "$T/$1.out" | tail -1 | sed "s/^GUEST-MOUNT /$1 mount: /"
}

# Waits for PID (leading session SID) to exit, as long as $T/NAME.out gets
# a GUEST-FS line at least every 600 s; a stuck run gets the stacks of the
# session's threads (user space by gdb, the kernel's from /proc) and fails.
wait_progress() { # NAME PID SID...
  local name=$1 pid=$2 last=-1 n end=$((SECONDS + 600)) sid
  shift 2
  while [ "$SECONDS" -lt "$end" ]; do
    kill -0 "$pid" 2>/dev/null || return 0
    n=$(grep -ac "^GUEST-FS" "$T/$name.out" || true)
    [ "$n" != "$last" ] && { last=$n; end=$((SECONDS + 600)); }
    guest_nap "$pid"
  done
  echo "$name: no progress for 600 s after $last GUEST-FS lines; its threads:" >&2
  for sid in "$@"; do
    for p in $(ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s { print $1 }'); do
      echo "--- $(cat "/proc/$p/comm") $p; kernel: $(tr '\n' ' ' <"/proc/$p/stack" 2>/dev/null | cut -c1-300)" >&2
      gdb -p "$p" -batch -ex "thread apply all bt 12" 2>/dev/null | grep -E "^#|^Thread" | head -80 >&2 || true
    done
  done
  tail -30 "$T/$name.out" >&2
  die "$name: stuck"
}

run_guest_once() { # NAME COMMAND...
  local name=$1; shift
  fresh_export
  setsid "$@" </dev/null >"$T/$name.out" 2>&1 &
  PID=$!
  wait_progress "$name" "$PID" "$PID"
  wait "$PID" || true
  PID=
  tr -d '\r' <"$T/$name.out" >"$T/$name.tmp" && mv "$T/$name.tmp" "$T/$name.out"
  check_run "$name"
}

# Both VMMs run with -no-reboot: a guest that triple- or double-faulted (the
# rig's nested SVM now and then faults an L2 guest for nothing it did:
# docs/rig.md) must not boot again and run the workload a second time on
# the export the first left behind. Such a run is made again, up to three
# attempts, as in bench-guest.sh; what the fault looked like is printed.
run_guest() { # NAME COMMAND...
  local attempt
  for attempt in 1 2 3; do
    run_guest_once "$@" && return 0
    guest_faulted "$T/$1.out" "$1" || exit 1
    echo "$1: the guest faulted (the rig's nested SVM, docs/rig.md); attempt $attempt of 3 lost:" >&2
    show_fault "$T/$1.out"
  done
  exit 1
}

# L1: a server on 127.0.0.1:PORT, L1's kernel mounts it and runs the workloads.
run_tcp() { # NAME PORT COMMAND...
  local name=$1 port=$2; shift 2
  fresh_export
  setsid "$@" </dev/null >"$T/$name.log" 2>&1 &
  PID=$!
  local ok=
  for _ in $(seq 100); do
    if mount -t 9p -o "trans=tcp,port=$port,version=9p2000.L,msize=$MSIZE,aname=$E,uname=root,access=user" \
         127.0.0.1 "$T/mnt" 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { cat "$T/$name.log" >&2; die "$name: cannot mount 127.0.0.1:$port"; }
  # The workload in a session of its own beside the server's, watched the same way.
  workload "$name" "$T/mnt" "$T/guest-fs" >"$T/$name.sh"
  setsid env B=busybox bash "$T/$name.sh" </dev/null >"$T/$name.out" 2>&1 &
  local wpid=$!
  wait_progress "$name" "$wpid" "$wpid" "$PID"
  wait "$wpid" || true
  umount "$T/mnt"
  kill -TERM -- -"$PID" 2>/dev/null; wait "$PID" 2>/dev/null || true
  PID=
  check_run "$name" || exit 1
}

rate() { # NAME OP: MB/s for seq*, operations (files, entries) per second otherwise
  grep -a "^GUEST-FS $2 " "$T/$1.out" | tail -1 | awk -v op="$2" '{
    if (op ~ /^seq/) printf "%.1f", $3 / 1e6 / ($4 / 1e9); else printf "%.0f", $3 / ($4 / 1e9) }'
}
better() { if [ -z "$1" ] || [ "$(echo "$2 > $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi; }

OPS=(seqwrite seqread create stat delete readdir)
declare -A R
keep() { for op in "${OPS[@]}"; do R[$1.$op]=$(better "${R[$1.$op]:-}" "$(rate "$1" "$op")"); done; }

run_vmm() { # vmmd|qemu
  local cmd
  guest_9p_cmd cmd "$1" "$BIN" "$T/script.raw" "$E"
  run_guest "$1" "${cmd[@]}"
  keep "$1"
}
run_fsd_tcp() {
  run_tcp fsd-tcp 5640 "$BIN/fsd" --export "$E" --listen tcp:127.0.0.1:5640 --security-model passthrough
  keep fsd-tcp
}
run_diod() {
  run_tcp diod 5641 diod -f -n -N -L stderr -l 127.0.0.1:5641 -e "$E"
  keep diod
}

# The first big sequential write of a fresh L1 runs slower than the ones
# after it, whichever VMM makes it (docs/benchmarks.md, ninth session; a
# 32 MiB one before did not take that away), so a discarded guest writes
# and reads the same size first, and the order alternates from run to run.
warm_up() {
  local cmd
  guest_9p_cmd cmd vmmd "$BIN" "$T/warm.raw" "$E"
  fresh_export
  timeout 300 "${cmd[@]}" </dev/null >"$T/warm.out" 2>&1 || true
  echo "warm-up guest (discarded): $(tr -d '\r' <"$T/warm.out" | grep -ac "^GUEST-FS") of 2 workloads ran"
}

warm_up
for run in $(seq "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then run_vmm vmmd; run_vmm qemu; run_fsd_tcp; run_diod
  else run_vmm qemu; run_vmm vmmd; run_diod; run_fsd_tcp; fi
done

unit() { case $1 in seq*) echo "MB/s";; readdir) echo "entries/s";; *) echo "files/s";; esac; }
table() { # TITLE OURS THEIRS
  printf '\n%-40s %12s %12s %8s\n' "$1, best of $RUNS" "$2" "$3" ratio
  for op in "${OPS[@]}"; do
    printf '%-40s %12s %12s %8.2f\n' "$op ($(unit "$op"))" "${R[$2.$op]}" "${R[$3.$op]}" \
      "$(echo "${R[$2.$op]} / ${R[$3.$op]}" | bc -l)"
  done
}
table "L2 guest, virtio-9p, mapped-xattr" vmmd qemu
table "L1 kernel, trans=tcp, passthrough" fsd-tcp diod
