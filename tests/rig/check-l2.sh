#!/bin/sh
# check-l2.sh [TIMEOUT]: boots an L2 Linux under KVM (in L1 when run by the rig)
# with the kit's kernel and L2 initramfs, and checks that its /init printed the
# marker. This is the template for later tests that boot guests with vmmd.
timeout_s=${1:-240}
: "${RIG_KIT:?RIG_KIT is not set: run this through rig-job.sh or rig-run.sh}"
. "$RIG_KIT/kit.env"
out=$(mktemp /tmp/rig-l2.XXXXXX)
trap 'rm -f "$out"' EXIT
start=$(date +%s%N)
timeout -s KILL "$timeout_s" qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 \
    -nographic -no-reboot -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" \
    -append "console=ttyS0 panic=-1 quiet" < /dev/null > "$out" 2>&1
rc=$?
ms=$((($(date +%s%N) - start) / 1000000))
tr -d '\r' < "$out"
if grep -q VMM-L2-MARKER "$out"; then
    echo "L2 booted to userspace and powered off in $ms ms (QEMU exit $rc)"
    exit 0
fi
echo "FAIL: no VMM-L2-MARKER from L2 after $ms ms (QEMU exit $rc)"
exit 1
