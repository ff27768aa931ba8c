# shellcheck shell=bash
# Sourced by bench-9p.sh and bench-guest.sh: what both do with their L2 guests.

. "$(dirname "${BASH_SOURCE[0]}")/../tests/rig/qemu-poweroff.sh"
GUEST_FAULT_RE='guest triple fault|asm_exc_double_fault'

# guest_faulted OUT NAME: whether the run NAME ("qemu": QEMU with
# QEMU_SHUTDOWN_TRACE) that wrote OUT ended in a fault of the guest that the
# rig's nested SVM makes (docs/rig.md), not in a failure of the VMM or of the
# workload. A reset after a kernel panic is the guest's own.
guest_faulted() {
  grep -aq -E "$GUEST_FAULT_RE" "$1" && return 0
  [ "${2:-}" = qemu ] && ! qemu_powered_off "$1" &&
    ! grep -aq "Kernel panic" "$1" && ! grep -aq "^qemu-system-x86_64:" "$1"
}
show_fault() { # OUT
  if grep -aq -E "$GUEST_FAULT_RE" "$1"; then grep -a -m1 -A12 -E "$GUEST_FAULT_RE" "$1" >&2 || true
  else echo "QEMU ended without the guest's poweroff (a reset under -no-reboot); its last lines:" >&2; tail -5 "$1" >&2; fi
}

# guest_nap PID: waits 5 s, or less if PID (a child of this shell) ends
# first. The watchers check on a run this way, not every 0.5 s: each check
# forks, in the L1 that is being measured.
guest_nap() {
  local nap
  sleep 5 &
  nap=$!
  wait -n "$1" "$nap" 2>/dev/null || true
  kill "$nap" 2>/dev/null || true
  wait "$nap" 2>/dev/null || true
}

# guest_9p_disk OUT GFS MSIZE: the raw disk a 9p benchmark's L2 guest runs
# (the kit's initramfs runs "sh </dev/vda"): at 0 a script that copies the
# static binary GFS from 64 KiB of the disk to /gfs, mounts the 9p tag
# "share" at /mnt with MSIZE, runs the lines read from stdin, unmounts and
# exits; GFS itself at 64 KiB.
guest_9p_disk() {
  local out=$1 gfs=$2 msize=$3 nblk
  nblk=$(( ($(stat -c %s "$gfs") + 4095) / 4096 ))
  [ "$nblk" -le 240 ] || { echo "$gfs is too big for the disk header" >&2; return 1; }
  {
    echo 'B=/bin/busybox'
    echo "\$B dd if=/dev/vda of=/gfs bs=4096 skip=16 count=$nblk 2>/dev/null; \$B chmod 755 /gfs"
    echo "\$B mkdir -p /mnt"
    echo "\$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=$msize share /mnt || \$B echo GUEST-9P-MOUNT-FAILED"
    cat
    echo "\$B umount /mnt"
    echo "exit 0"
  } >"$out.sh"
  truncate -s 1M "$out"
  dd if="$out.sh" of="$out" conv=notrunc status=none
  dd if="$gfs" of="$out" bs=4096 seek=16 conv=notrunc status=none
}

# guest_export_fs DIR MIB: an ext4 image of MIB MiB mounted on DIR/fs (loop,
# discard: L1's tmpfs gets deleted blocks back). Its inode tables and journal
# are written now: left lazy, ext4 zeroes them from a kernel thread while the
# first runs are measured.
guest_export_fs() {
  truncate -s "$2M" "$1/fs.img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$1/fs.img"
  mkdir -p "$1/fs"
  mount -o loop,discard "$1/fs.img" "$1/fs"
}

# guest_9p_cmd ARRAY VMM BIN DISK EXPORT: sets ARRAY to the command that boots
# the kit's L2 guest (256 MiB, one vCPU, -no-reboot) running DISK (made by
# guest_9p_disk), with EXPORT as the 9p tag "share" under mapped-xattr.
# VMM vmmd: BIN/vmmd -virtfs. VMM qemu: QEMU's microvm with its own 9p server
# (-fsdev and -device virtio-9p-device: microvm has no PCI for -virtfs) and
# QEMU_SHUTDOWN_TRACE. The benchmarks compare these two command lines.
# shellcheck disable=SC2034 # guest_9p_argv names the caller's array
guest_9p_cmd() {
  local -n guest_9p_argv=$1
  local append="console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vda"
  local disk=(-drive "file=$4,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-device,drive=d0)
  case $2 in
    vmmd) guest_9p_argv=("$3/vmmd" -no-reboot -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -m 256M
            -append "$append" "${disk[@]}" -virtfs "local,path=$5,mount_tag=share,security_model=mapped-xattr") ;;
    qemu) guest_9p_argv=(qemu-system-x86_64 -enable-kvm -M microvm -cpu host -m 256 -nographic -no-reboot
            "${QEMU_SHUTDOWN_TRACE[@]}" -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -append "$append" "${disk[@]}"
            -fsdev "local,id=f0,path=$5,security_model=mapped-xattr" -device virtio-9p-device,fsdev=f0,mount_tag=share) ;;
    *) echo "guest_9p_cmd: unknown VMM $2" >&2; return 1 ;;
  esac
}
