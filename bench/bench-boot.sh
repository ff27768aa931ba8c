#!/usr/bin/env bash
# Boot time to the guest's marker and poweroff: vmmd vs qemu-system-x86_64
# -M microvm -enable-kvm, same kernel (the kit's vmlinux, PVH entry), same
# initramfs, same command line, 256 MiB, best of 3, in the same run. Needs a
# /dev/kvm that boots Linux: run it in the rig's L1:
#   bash tests/rig/rig-run.sh -- bash bench/bench-boot.sh build/bin
# Prints both times and ratio = qemu_time / vmmd_time (above 1: vmmd is faster).
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
RUNS=${2:-3}
: "${RIG_KIT:?RIG_KIT is not set: run this through tests/rig/rig-run.sh}"
. "$RIG_KIT/kit.env"
APPEND="console=ttyS0 panic=-1 quiet"
out=$(mktemp /tmp/bench-boot.XXXXXX)
trap 'rm -f "$out"' EXIT

seconds() { # COMMAND... -> wall seconds, checking the marker
  local s e
  s=$(date +%s%N)
  timeout 300 "$@" </dev/null >"$out" 2>&1 || true
  e=$(date +%s%N)
  grep -q VMM-L2-MARKER "$out" || { echo "no marker from: $*" >&2; tail -5 "$out" >&2; exit 1; }
  echo "scale=3; ($e - $s) / 1000000000" | bc
}
best() { local b= t; for _ in $(seq "$RUNS"); do t=$("$@"); if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi; done; echo "$b"; }

ours=$(best seconds "$BIN/vmmd" -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -m 256M -append "$APPEND")
theirs=$(best seconds qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -nographic -no-reboot \
           -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -append "$APPEND")
printf 'boot to marker + poweroff (best of %d): vmmd %.2f s, qemu microvm %.2f s, ratio %.2f\n' \
  "$RUNS" "$ours" "$theirs" "$(echo "scale=3; $theirs / $ours" | bc)"
# QEMU's microvm has no RTC under KVM unless rtc=on, yet its FADT does not
# say so, and Linux's rtc_cmos probe then waits on a port that reads 0xff;
# vmmd's FADT says "no CMOS RTC". With rtc=on QEMU's guest finds a working
# RTC and skips that wait: the comparison without the difference.
rtc=$(best seconds qemu-system-x86_64 -enable-kvm -M microvm,rtc=on -cpu host -m 256 -nographic -no-reboot \
        -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -append "$APPEND")
printf 'the same with qemu -M microvm,rtc=on: qemu %.2f s, ratio %.2f\n' \
  "$rtc" "$(echo "scale=3; $rtc / $ours" | bc)"
