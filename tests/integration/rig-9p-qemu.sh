#!/usr/bin/env bash
# In the rig's L1: QEMU's own 9p server and fsd (through vmmd's virtio-9p),
# given the same export under security_model=mapped-xattr, show the guest the
# same owners, modes and file types, each reading what the other wrote.
#
#   1. QEMU (-M microvm -enable-kvm) boots the kit's L2 guest on export Q; the
#      guest makes a tree q/ (owners set with chown, modes with chmod, setuid,
#      sticky, symlink, fifo, char and block devices, hard link) and lists the
#      export: `stat -c '%n %u %g %a %F %t %T'` of every name.
#   2. Q is copied (cp -a: QEMU's user.virtfs.* xattrs come along) to V;
#      vmmd -virtfs boots the same guest on V. It lists the export: the listing
#      must be QEMU's. Then it makes the same tree as v/ and lists again.
#   3. QEMU boots on V once more: its listing must be the vmmd guest's last one.
#   4. q/ (made through QEMU) and v/ (made through fsd) must be the same tree,
#      for the guest and on the host (host modes, owners, user.virtfs.* values).
# QEMU's microvm has no PCI bus, so QEMU gets the long form -fsdev/-device
# virtio-9p-device (its -virtfs makes a virtio-9p-pci); -virtfs for vmmd.
# The exports live on an ext4 loop image: L1's /tmp has no user xattrs.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 missing"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
. "$(dirname "$0")/../rig/qemu-poweroff.sh"
T=$(mktemp -d /tmp/rig-9p-qemu.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
  mountpoint -q "$T/fs" 2>/dev/null && umount "$T/fs"
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/out" ] && tail -40 "$T/out" >&2; exit 1; }

truncate -s 128M "$T/fs.img"
mkfs.ext4 -q -F "$T/fs.img"
mkdir -p "$T/fs"
mount -o loop "$T/fs.img" "$T/fs" || fail "loop mount of the ext4 image"
Q=$T/fs/q-export
V=$T/fs/v-export
# Host-made entries carry no xattrs: both servers show the host's owner and mode.
mkdir -m 0751 "$Q"
echo host >"$Q/hostfile"
chown 4321:4322 "$Q/hostfile"
chmod 0640 "$Q/hostfile"

cat >"$T/script.sh" <<'EOF'
B=/bin/busybox
$B mkdir -p /mnt
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 share /mnt || { $B echo GUEST-9P-MOUNT-FAILED; exit 0; }
cd /mnt
listing() { # TAG: one line per name, sorted
  $B find . | $B sort | while read -r n; do $B echo "$1 $($B stat -c '%n %u %g %a %F %t %T' "$n")"; done
}
listing LIST-BEFORE
if [ -n "$MAKE" ]; then
  $B mkdir "$MAKE" && cd "$MAKE"
  $B mkdir -m 750 d && $B chown 1234:5678 d
  $B echo data >d/f && $B chown 1234:100 d/f && $B chmod 640 d/f
  $B touch plain
  $B echo x >suid && $B chown 1000:1000 suid && $B chmod 4755 suid
  $B echo y >sgid && $B chmod 2711 sgid
  $B echo z >none && $B chmod 0 none
  $B mkdir -m 1777 sticky
  $B ln -s d/f sym && $B chown -h 1234:5678 sym
  $B mkfifo -m 620 fifo && $B chown 42:43 fifo
  $B mknod -m 660 cdev c 1 3 && $B chown 0:6 cdev
  $B mknod -m 640 bdev b 7 2
  $B mkdir -p d/sub/deeper && $B chown -R 7:8 d/sub
  $B ln d/f hard
  $B echo "GUEST-MADE $MAKE"
  cd /mnt
  listing LIST-AFTER
fi
cd /
$B umount /mnt && $B echo GUEST-UMOUNT-OK
exit 0
EOF

write_script() { # MAKE: the directory the guest makes its tree in ("": none)
  rm -f "$T/script.raw"
  truncate -s 64K "$T/script.raw"
  { echo "MAKE=$1"; cat "$T/script.sh"; } | dd of="$T/script.raw" conv=notrunc status=none
}

APPEND="console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vda"
DISK=(-drive "file=$T/script.raw,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-device,drive=d0)

wait_guest() { # LABEL: waits for $PID (bounded), keeps its console in $T/console.LABEL
  local label=$1 rc=0 t0=$SECONDS
  # A guest kernel that panics under QEMU's -no-reboot may never exit: stop waiting.
  end=$((SECONDS + 300)); while [ "$SECONDS" -lt "$end" ]; do
    kill -0 "$PID" 2>/dev/null || break
    grep -aq "Kernel panic - not syncing" "$T/out" && fail "$label: the guest's kernel panicked"
    sleep 0.1
  done
  kill -0 "$PID" 2>/dev/null && fail "$label: still running after 300 s"
  wait "$PID" || rc=$?
  PID=
  echo "$label: the guest ran for $((SECONDS - t0)) s (exit $rc)"
  tr -d '\r' <"$T/out" >"$T/console.$label"
  [ $rc -eq 0 ] || fail "$label: exit $rc"
  if [ -n "${QEMU_RUN:-}" ] && ! qemu_powered_off "$T/console.$label"; then
    fail "$label: QEMU ended without the guest's poweroff: a guest triple fault (a reset under -no-reboot)"
  fi
  grep -aq "^GUEST-9P-MOUNT-FAILED" "$T/console.$label" && fail "$label: the guest could not mount the share"
  grep -aq "^GUEST-UMOUNT-OK" "$T/console.$label" || fail "$label: the guest did not finish (no umount)"
  return 0
}

run_qemu() { # LABEL EXPORT MAKE
  write_script "$3"
  setsid qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m 256 -nographic -no-reboot \
      "${QEMU_SHUTDOWN_TRACE[@]}" -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -append "$APPEND" "${DISK[@]}" \
      -fsdev "local,id=f0,path=$2,security_model=mapped-xattr" -device virtio-9p-device,fsdev=f0,mount_tag=share \
      </dev/null >"$T/out" 2>&1 &
  PID=$!
  QEMU_RUN=1 wait_guest "$1"
}

run_vmmd() { # LABEL EXPORT MAKE
  write_script "$3"
  setsid "$BIN/vmmd" -kernel "$RIG_BZIMAGE" -initrd "$RIG_INITRAMFS_L2" -m 256M -append "$APPEND" "${DISK[@]}" \
      -virtfs "local,path=$2,mount_tag=share,security_model=mapped-xattr" </dev/null >"$T/out" 2>&1 &
  PID=$!
  wait_guest "$1"
}

listing() { # LABEL TAG: the guest's lines, without the tag
  grep -a "^$2 " "$T/console.$1" | cut -d' ' -f2- || true
}

same() { # WHAT A-FILE B-FILE
  if ! cmp -s "$2" "$3"; then
    diff "$2" "$3" >&2 || true
    fail "$1"
  fi
}

# 1. QEMU makes q/.
run_qemu qemu-1 "$Q" q
listing qemu-1 LIST-AFTER >"$T/list.qemu-1"
grep -q '^\./q/cdev 0 6 660 character special file 1 3$' "$T/list.qemu-1" \
  || fail "qemu-1: QEMU's guest did not make the tree: $(cat "$T/list.qemu-1")"
[ "$(grep -c '^\./q' "$T/list.qemu-1")" = 15 ] || fail "qemu-1: $(grep -c '^\./q' "$T/list.qemu-1") names under q/, not 15"

# 2. vmmd on a copy: QEMU's tree as fsd shows it, then v/.
cp -a "$Q" "$V"
python3 -c 'import os, sys; os.getxattr(sys.argv[1], "user.virtfs.uid")' "$V/q/d/f" \
  || fail "cp -a did not copy QEMU's user.virtfs.* xattrs"
run_vmmd vmmd "$V" v
listing vmmd LIST-BEFORE >"$T/list.vmmd-before"
listing vmmd LIST-AFTER >"$T/list.vmmd-after"
same "QEMU and fsd show the guest different owners or modes of QEMU's tree" "$T/list.qemu-1" "$T/list.vmmd-before"
echo "fsd shows the guest QEMU's tree as QEMU does ($(wc -l <"$T/list.qemu-1") names):"
sed 's/^/  /' "$T/list.qemu-1"

# 3. QEMU on V: what fsd wrote.
run_qemu qemu-2 "$V" ""
listing qemu-2 LIST-BEFORE >"$T/list.qemu-2"
same "QEMU shows the guest what fsd wrote differently" "$T/list.vmmd-after" "$T/list.qemu-2"
echo "QEMU shows the guest fsd's tree as fsd does ($(wc -l <"$T/list.qemu-2") names)"

# 4. The same operations through either server: the same tree, for the guest and on the host.
grep '^\./q' "$T/list.qemu-2" | sed 's|^\./q|.|' >"$T/tree.q"
grep '^\./v' "$T/list.qemu-2" | sed 's|^\./v|.|' >"$T/tree.v"
same "the tree made through fsd differs from the one made through QEMU" "$T/tree.q" "$T/tree.v"
host_view() { # DIR: host mode, owner and user.virtfs.* of every name, relative
  python3 - "$1" <<'PY'
import os, struct, sys
top = sys.argv[1]
def show(p):
    st = os.lstat(p)
    xs = []
    for k in ("uid", "gid", "mode", "rdev"):
        try:
            v = os.getxattr(p, "user.virtfs." + k, follow_symlinks=False)
            xs.append("%s=%o" % (k, struct.unpack("<Q", v.ljust(8, b"\0"))[0]) if k == "mode"
                      else "%s=%d" % (k, struct.unpack("<Q", v.ljust(8, b"\0"))[0]))
        except OSError:
            xs.append(k + "=-")
    print(os.path.relpath(p, top), "%o" % st.st_mode, st.st_uid, st.st_gid, " ".join(xs))
for d, dirs, files in sorted(os.walk(top)):
    show(d)
    for f in sorted(files):
        show(os.path.join(d, f))
PY
}
host_view "$V/q" >"$T/host.q"
host_view "$V/v" >"$T/host.v"
same "on the host, fsd's tree differs from QEMU's (mode, owner, user.virtfs.*)" "$T/host.q" "$T/host.v"
echo "on the host (mode, owner, user.virtfs.*), the same for both:"
sed 's/^/  /' "$T/host.v"
echo "PASS: QEMU's 9p server and fsd agree under mapped-xattr (guest listings and host representation)"
