#!/usr/bin/env bash
# demo-guest.sh [BIN_DIR]: the main job. vmmd boots the demo guest: Debian's
# kernel (linux-image-amd64), a busybox initramfs (the guest test rig's kit),
# a qcow2 disk served by blockd over NBD and a virtio-rng, each helper in its
# own sandbox. The guest runs the script stored on its disk, then gives a shell
# on this terminal (when stdin is one; otherwise it powers off).
#
# Where this host's /dev/kvm cannot boot Linux (tests/rig/probe-host-kvm.sh),
# the demo runs inside the guest test rig (an L1 Linux under QEMU TCG with a
# real /dev/kvm), without a shell: the rig's jobs have no terminal.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$top/build/bin}
BIN=$(cd "$BIN" && pwd)

KIT=$(bash "$top/tests/rig/build-kit.sh")
. "$KIT/kit.env"

if [ -z "${RIG_MODE:-}" ] && ! bash "$top/tests/rig/probe-host-kvm.sh" --kit "$KIT" >/dev/null; then
  echo "This host's /dev/kvm cannot boot Linux (a software nested hypervisor): running the demo inside the guest test rig (QEMU TCG L1 with KVM), without an interactive shell."
  exec bash "$top/tests/rig/rig-run.sh" --timeout 900 -- bash "$top/tools/demo-guest.sh" "$BIN"
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/vmmd-demo.XXXXXX")
trap 'rm -rf "$W"' EXIT

# The disk: a shell script the guest runs from /dev/vda (sh reads it up to
# its `exit`; the rest of the disk is zeros), stored in a qcow2 image.
cat >"$W/guest.sh" <<'EOF'
echo
echo "== Hello from the demo guest: Linux $(uname -r), booted by vmmd"
echo "== vCPUs: $(grep -c ^processor /proc/cpuinfo); RAM: $(awk '/MemTotal/ { print int($2 / 1024) }' /proc/meminfo) MiB"
echo "== /dev/vda: this script, in a qcow2 image served by blockd over NBD: $(cat /sys/block/vda/size) sectors, serial '$(cat /sys/block/vda/serial)'"
echo "== virtio-mmio devices, described to Linux in ACPI:"
for d in /sys/bus/virtio/devices/*; do echo "   $(basename "$d"): $(basename "$(readlink "$d/driver")")"; done
echo "== 16 bytes from /dev/hwrng (virtio-rng, from the host's /dev/urandom): $(head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
echo "guest clock: $(date -u)" >/dev/vdb && sync
echo "== wrote the guest's clock to /dev/vdb (a second qcow2 through blockd); the host reads it back after poweroff"
echo
exit 0
EOF
truncate -s 1M "$W/guest.sh"
"$BIN/vmm-img" convert -q -f raw -O qcow2 "$W/guest.sh" "$W/demo.qcow2"
"$BIN/vmm-img" create -q -f qcow2 "$W/scratch.qcow2" 16M

mode=poweroff
[ -t 0 ] && [ -z "${RIG_MODE:-}" ] && mode=shell
echo "== vmmd -M microvm -m 256M -smp 2 -kernel vmlinuz -initrd initramfs -nographic -drive file=demo.qcow2,if=none,id=d0 -device virtio-blk-device,drive=d0,serial=demo ..."
[ "$mode" = shell ] && echo "== (a shell follows on this terminal; 'exit' powers the guest off)"
rc=0
"$BIN/vmmd" -name demo -M microvm -m 256M -smp 2 -sandbox on,spawn=deny \
  -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" \
  -append "console=ttyS0 quiet panic=-1 vmm_l2=$mode vmm_l2_cmd=sh</dev/vda" \
  -nographic \
  -drive "file=$W/demo.qcow2,if=none,id=d0,readonly=on" -device virtio-blk-device,drive=d0,serial=demo \
  -drive "file=$W/scratch.qcow2,if=virtio" \
  -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-device,rng=rng0 || rc=$?
echo "== vmmd exited with status $rc after the guest powered off"
"$BIN/vmm-img" convert -q -f qcow2 -O raw "$W/scratch.qcow2" "$W/scratch.raw"
echo "== the host reads /dev/vdb's first line from scratch.qcow2: $(head -n 1 "$W/scratch.raw" | tr -d '\0')"
exit $rc
