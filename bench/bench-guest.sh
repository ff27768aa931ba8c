#!/usr/bin/env bash
# A guest's disk I/O and the VMM's private memory: vmmd vs qemu-system-x86_64
# -M microvm -enable-kvm, same kernel (the kit's vmlinux, PVH entry), same
# initramfs, 256 MiB, one vCPU, the same raw image as a virtio-blk disk
# (vmmd: served by blockd over NBD; QEMU: its own block layer), in one run.
# Needs a /dev/kvm that boots Linux: run it in the rig's L1:
#   bash tests/rig/rig-run.sh -- bash bench/bench-guest.sh build/bin [RUNS]
# The guest runs bench/guest-io (static, O_DIRECT, queue depth 1): 256 MiB
# sequential write and read in 1 MiB requests, 3000 random 4 KiB writes and
# reads. USS: the sum of Private_Clean + Private_Dirty of every process of the
# VMM (vmmd, its spawner and helpers; QEMU's one process; guest RAM shared
# among our helpers once, see uss_kib), taken when the
# guest has booted and is idle. Prints each row and ratio (above 1: vmmd is
# better: faster, or less memory).
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
RUNS=${2:-2}
SEQ_MIB=${BENCH_SEQ_MIB:-256}     # smaller for a quick look; the rows above use the defaults
RAND_OPS=${BENCH_RAND_OPS:-3000}
HERE=$(cd "$(dirname "$0")" && pwd)
: "${RIG_KIT:?RIG_KIT is not set: run this through tests/rig/rig-run.sh}"
. "$RIG_KIT/kit.env"
. "$HERE/guest-lib.sh"
T=$(mktemp -d /tmp/bench-guest.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill -KILL -- -"$PID" 2>/dev/null; rm -rf "$T"' EXIT

gcc -static -O2 -o "$T/guest-io" "$HERE/guest-io.c"
NBLK=$(( ($(stat -c %s "$T/guest-io") + 4095) / 4096 ))
[ "$NBLK" -le 240 ] || { echo "guest-io is too big for the disk header" >&2; exit 1; }
# Both disks start with the same 1 MiB header (script at 0, guest-io at
# 64 KiB), so the guest finds its script whichever disk is vdb; the script
# measures the big one, from 1 MiB on.
cat >"$T/script.sh" <<EOF
B=/bin/busybox
for d in vda vdb; do [ "\$(\$B cat /sys/block/\$d/size)" -gt 8192 ] && D=/dev/\$d; done
\$B dd if=/dev/vdb of=/gio bs=4096 skip=16 count=$NBLK 2>/dev/null
\$B chmod 755 /gio
\$B echo "GUEST-READY \$D"
\$B sleep 5
/gio \$D seqwrite $SEQ_MIB 1048576
/gio \$D seqread $SEQ_MIB 1048576
/gio \$D randwrite $RAND_OPS 1048576
/gio \$D randread $RAND_OPS 1048576
exit 0
EOF
truncate -s 1M "$T/header.raw"
dd if="$T/script.sh" of="$T/header.raw" conv=notrunc status=none
dd if="$T/guest-io" of="$T/header.raw" bs=4096 seek=16 conv=notrunc status=none
cp "$T/header.raw" "$T/script.raw"
cp "$T/header.raw" "$T/disk.raw"
truncate -s 512M "$T/disk.raw"
fallocate -l 512M "$T/disk.raw"   # allocated: neither VMM pays for block allocation

APPEND="console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vdb"
DISKS=(-drive "file=$T/disk.raw,format=raw,if=none,id=d0" -device virtio-blk-device,drive=d0
       -drive "file=$T/script.raw,format=raw,if=none,id=d1,readonly=on" -device virtio-blk-device,drive=d1)

# Guest RAM that two of our processes map (vcpu-worker, and blockd, which
# moves disk data through it) is private to neither, yet it is the VM's own
# memory: the guest-RAM memfd's pages are counted by their proportional share
# (Pss) instead, which adds up to each page once over the processes mapping it.
uss_kib() { # SESSION: the private memory of every process in it
  local total=0 p v
  for p in $(ps -e -o pid=,sid= | awk -v s="$1" '$2 == s { print $1 }'); do
    v=$(awk '/^Private_(Clean|Dirty):/ { t += $2 } END { print t + 0 }' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + v))
    v=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { ram = ($0 ~ /memfd:guest-ram/) }
             ram && /^Pss:/ { t += $2 } ram && /^Private_(Clean|Dirty):/ { t -= $2 }
             END { print t + 0 }' "/proc/$p/smaps" 2>/dev/null || echo 0)
    total=$((total + v))
  done
  echo "$total"
}

# A run whose guest triple- or double-faulted (the rig's nested SVM now and
# then faults an L2 guest for nothing it did: docs/rig.md) is run again, up
# to three attempts, as the guest tests are (tests/rig/retry-triple-fault.sh);
# what the fault looked like is printed.
run_vmm() { # NAME COMMAND...
  local attempt rc=0
  for attempt in 1 2 3; do
    rc=0
    run_vmm_once "$@" && return 0 || rc=$?
    if [ -n "$PID" ]; then kill -KILL -- -"$PID" 2>/dev/null; wait "$PID" 2>/dev/null; PID=; fi
    guest_faulted "$T/$1.out" "$1" || exit "$rc"
    echo "$1: the guest faulted (the rig's nested SVM, docs/rig.md); attempt $attempt of 3 lost:" >&2
    show_fault "$T/$1.out"
  done
  exit "$rc"
}

run_vmm_once() { # NAME COMMAND...: the guest's GUEST-IO lines and USS into $T/NAME.*
  local name=$1; shift
  setsid "$@" </dev/null >"$T/$name.out" 2>&1 &
  PID=$!
  local end=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$end" ]; do grep -aq "^GUEST-READY" "$T/$name.out" && break; kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  grep -aq "^GUEST-READY" "$T/$name.out" || { echo "$name: the guest did not get ready" >&2; tail -20 "$T/$name.out" >&2; return 1; }
  sleep 3
  uss_kib "$PID" >"$T/$name.uss"
  # Until it exits, as long as the guest makes progress (a GUEST-IO line
  # at least every 300 s); a stuck VMM gets its threads' stacks dumped.
  local last=0 n
  end=$((SECONDS + 300))
  while [ "$SECONDS" -lt "$end" ]; do
    kill -0 "$PID" 2>/dev/null || break
    n=$(grep -ac "^GUEST-IO" "$T/$name.out" || true)
    [ "$n" != "$last" ] && { last=$n; end=$((SECONDS + 300)); }
    guest_nap "$PID"
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "$name: no progress for 300 s after $last GUEST-IO lines; its threads:" >&2
    for p in $(ps -e -o pid=,sid= | awk -v s="$PID" '$2 == s { print $1 }'); do
      echo "--- $(cat "/proc/$p/comm") $p" >&2
      gdb -p "$p" -batch -ex "thread apply all bt 12" 2>/dev/null | grep -E "^#|^Thread" | head -80 >&2 || true
    done
    tail -30 "$T/$name.out" >&2
    return 1
  fi
  wait "$PID" || true
  PID=
  [ "$(grep -ac "^GUEST-IO" "$T/$name.out")" = 4 ] || { echo "$name: the guest's I/O failed" >&2; tail -20 "$T/$name.out" >&2; return 1; }
}

rate() { # NAME OP: MB/s for seq, IOPS for rand
  grep -a "^GUEST-IO $2 " "$T/$1.out" | tail -1 | awk -v op="$2" '{
    if (op ~ /^seq/) printf "%.1f", $3 / 1e6 / ($4 / 1e9); else printf "%.0f", ($3 / 4096) / ($4 / 1e9) }'
}
better() { if [ -z "$1" ] || [ "$(echo "$2 > $1" | bc -l)" = 1 ]; then echo "$2"; else echo "$1"; fi; }
smaller() { if [ -z "$1" ] || [ "$2" -lt "$1" ]; then echo "$2"; else echo "$1"; fi; }

declare -A OURS THEIRS
USS_OURS= USS_THEIRS=
for _ in $(seq "$RUNS"); do
  run_vmm vmmd "$BIN/vmmd" -no-reboot -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -m 256M -append "$APPEND" "${DISKS[@]}"
  run_vmm qemu qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -nographic -no-reboot "${QEMU_SHUTDOWN_TRACE[@]}" \
    -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -append "$APPEND" "${DISKS[@]}"
  for op in seqwrite seqread randwrite randread; do
    OURS[$op]=$(better "${OURS[$op]:-}" "$(rate vmmd $op)")
    THEIRS[$op]=$(better "${THEIRS[$op]:-}" "$(rate qemu $op)")
  done
  USS_OURS=$(smaller "$USS_OURS" "$(cat "$T/vmmd.uss")")
  USS_THEIRS=$(smaller "$USS_THEIRS" "$(cat "$T/qemu.uss")")
done

printf '%-34s %12s %12s %8s\n' "guest I/O, best of $RUNS" vmmd qemu ratio
for op in seqwrite seqread randwrite randread; do
  unit="MB/s"; case $op in rand*) unit=IOPS;; esac
  printf '%-34s %12s %12s %8.2f\n' "$op ($unit)" "${OURS[$op]}" "${THEIRS[$op]}" \
    "$(echo "${OURS[$op]} / ${THEIRS[$op]}" | bc -l)"
done
printf '%-34s %12s %12s %8.2f\n' "USS, all processes (KiB)" "$USS_OURS" "$USS_THEIRS" \
  "$(echo "$USS_THEIRS / $USS_OURS" | bc -l)"
