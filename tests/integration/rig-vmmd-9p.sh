#!/usr/bin/env bash
# In the rig's L1: Debian's kernel, booted by vmmd, mounts a host directory
# through virtio-9p (vcpu-worker) served by the fsd helper:
#   mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /mnt
# with -virtfs (security_model=mapped-xattr), with the long form -fsdev
# local,...  -device virtio-9p-device,... and with -fsdev local,socket=PATH to
# an fsd started on its own (fsd --listen unix:PATH), and with
# security_model=passthrough under -sandbox on (the spawner keeps the file
# capabilities for fsd alone, so the guest's chown is the host's). The guest creates, writes, appends, truncates,
# renames across directories, links, symlinks, chmods and chowns, makes a fifo,
# lists a directory of 300 entries and reads a host-made file; the host then
# checks the export: contents, and the representation of the security model
# (user.virtfs.* xattrs). A readonly export refuses the guest's writes.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
T=$(mktemp -d /tmp/rig-9p.XXXXXX)
PID=
FSD_PID=
cleanup() {
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
  [ -n "$FSD_PID" ] && kill -KILL "$FSD_PID" 2>/dev/null || true
  mountpoint -q "$T/fs" 2>/dev/null && umount "$T/fs"
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -40 "$T/out" >&2; grep -a -m1 "guest triple fault" "$T/out" >&2 || true; exit 1; }
# The exports live on ext4: L1's /tmp is a tmpfs, which has no user.* xattrs.
truncate -s 256M "$T/fs.img"
mkfs.ext4 -q -F "$T/fs.img"
mkdir -p "$T/fs"
mount -o loop "$T/fs.img" "$T/fs" || fail "loop mount of the ext4 image"
E=$T/fs

cat >"$T/script.sh" <<'EOF'
B=/bin/busybox
$B mkdir -p /mnt
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /mnt || { $B echo GUEST-9P-MOUNT-FAILED; exit 0; }
cd /mnt
$B cat hostfile | $B md5sum | $B cut -d' ' -f1 | $B sed 's/^/GUEST-HOSTFILE-MD5 /'
if ! $B touch probe 2>/tmp/err; then
  $B echo "GUEST-READONLY $($B cat /tmp/err)"
  exit 0
fi
$B mkdir -p a/b c
$B echo hello >a/b/f
$B echo world >>a/b/f
$B dd if=/dev/zero of=big bs=64k count=16 2>/dev/null
$B truncate -s 4096 big 2>/dev/null || $B dd if=/dev/zero of=big bs=4096 count=1 2>/dev/null
$B mv a/b/f c/g
$B ln c/g c/hard
$B ln -s ../c/g a/sym
$B chmod 640 c/g
$B chown 1234:5678 c/g
$B mkfifo c/fifo
$B mkdir many
i=0; while [ $i -lt $MANY ]; do : >many/f$i; i=$((i + 1)); done
$B echo "GUEST-MANY $($B ls many | $B wc -l)"
$B echo "GUEST-READLINK $($B readlink a/sym)"
$B echo "GUEST-CONTENT $($B cat a/sym | $B tr '\n' ' ')"
$B echo "GUEST-STAT $($B stat -c '%a %u %g %h' c/g)"
$B sync
cd /
$B umount /mnt && $B echo GUEST-UMOUNT-OK
exit 0
EOF
# The guest's script on a raw disk; MANY entries in one directory (the later
# runs list fewer: file creation in an L2 guest under a TCG L1 is slow).
MANY=300
write_script() {
  rm -f "$T/script.raw"
  truncate -s 64K "$T/script.raw"
  { echo "MANY=$MANY"; cat "$T/script.sh"; } | dd of="$T/script.raw" conv=notrunc status=none
}

run_guest() { # LABEL SHARE-OPTIONS...
  local label=$1 rc=0 t0=$SECONDS; shift
  write_script
  setsid "$BIN/vmmd" -sandbox "$SANDBOX" -kernel "$RIG_BZIMAGE" -initrd "$RIG_INITRAMFS_L2" -m 256M \
      -append "console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vda" \
      -drive "file=$T/script.raw,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-device,drive=d0 \
      "$@" -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
  PID=$!
  end=$((SECONDS + 300)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$label: vmmd still running after 300 s"
  wait "$PID" || rc=$?
  PID=
  echo "$label: the guest ran for $((SECONDS - t0)) s"
  tr -d '\r' <"$T/out" >"$T/console"
  [ $rc -eq 0 ] || fail "$label: vmmd exited $rc"
  if grep -aq "guest-triple-fault" "$T/console"; then
    grep -a -m1 -B5 -A40 -E "BUG|Oops|panic|general protection|RIP:" "$T/console" >&2 || true
    fail "$label: the guest triple-faulted (its kernel's last words above, if any)"
  fi
  grep -aq "^GUEST-9P-MOUNT-FAILED" "$T/console" && fail "$label: the guest could not mount the share"
  # fsd started by vmmd gets the guest's RAM; an outside fsd (socket=) does not.
  local via="guest memory"
  [ "$label" = socket ] && via="the socket"
  grep -aq "virtio-9p '[^']*': data through $via" "$T/out" || fail "$label: 9P data did not go through $via"
  [ "$(guest GUEST-HOSTFILE-MD5)" = "$HOST_MD5" ] || fail "$label: the guest read the host's file as '$(guest GUEST-HOSTFILE-MD5)'"
  return 0
}
guest() { grep -a "^$1" "$T/console" | tail -1 | cut -d' ' -f2-; }

check_tree() { # LABEL EXPORT
  local label=$1 e=$2
  [ "$(guest GUEST-MANY)" = "$MANY" ] || fail "$label: the guest listed $(guest GUEST-MANY) entries, not $MANY"
  [ "$(guest GUEST-READLINK)" = ../c/g ] || fail "$label: readlink '$(guest GUEST-READLINK)'"
  [ "$(guest GUEST-CONTENT)" = "hello world " ] || fail "$label: content through the symlink '$(guest GUEST-CONTENT)'"
  [ "$(guest GUEST-STAT)" = "640 1234 5678 2" ] || fail "$label: the guest's stat of c/g: '$(guest GUEST-STAT)'"
  grep -aq "^GUEST-UMOUNT-OK" "$T/console" || fail "$label: umount failed"
  [ "$(cat "$e/c/g")" = "hello
world" ] || fail "$label: host content of c/g"
  [ ! -e "$e/a/b/f" ] || fail "$label: rename left the source"
  [ "$(stat -c %i "$e/c/g")" = "$(stat -c %i "$e/c/hard")" ] || fail "$label: the hard link is not one inode on the host"
  # The mapped models keep a symlink as a regular file holding the target (QEMU's layout).
  if [ "$label" != passthrough ]; then
    [ -f "$e/a/sym" ] && [ "$(cat "$e/a/sym")" = ../c/g ] || fail "$label: host file of the symlink"
  else
    [ "$(readlink "$e/a/sym")" = ../c/g ] || fail "$label: host symlink target"
  fi
  [ "$(stat -c %s "$e/big")" = 4096 ] || fail "$label: truncate: host size $(stat -c %s "$e/big")"
  [ "$(ls "$e/many" | wc -l)" = "$MANY" ] || fail "$label: host has $(ls "$e/many" | wc -l) entries"
}

HOST_MD5=
SANDBOX=on
make_export() { # DIR
  mkdir -p "$1"
  head -c 100000 /dev/urandom >"$1/hostfile"
  HOST_MD5=$(md5sum <"$1/hostfile" | cut -d' ' -f1)
}

# mapped-xattr through -virtfs: the guest's owner and mode live in xattrs;
# host files stay owned by fsd's uid (root here) with the fmode/dmode defaults.
make_export "$E/x"
run_guest "mapped-xattr" -virtfs "local,path=$E/x,mount_tag=share,security_model=mapped-xattr"
check_tree "mapped-xattr" "$E/x"
xattr_u32() { # FILE NAME: a little-endian 32-bit value, as QEMU writes user.virtfs.*
  python3 -c 'import os, struct, sys; print(struct.unpack("<I", os.getxattr(sys.argv[1], sys.argv[2])[:4])[0])' "$1" "$2"
}
[ "$(xattr_u32 "$E/x/c/g" user.virtfs.uid)" = 1234 ] || fail "mapped-xattr: user.virtfs.uid of c/g is not 1234"
[ "$(xattr_u32 "$E/x/c/g" user.virtfs.gid)" = 5678 ] || fail "mapped-xattr: user.virtfs.gid of c/g is not 5678"
[ "$(( $(xattr_u32 "$E/x/c/g" user.virtfs.mode) & 07777 ))" = $((0640)) ] || fail "mapped-xattr: user.virtfs.mode of c/g"
[ "$(stat -c %u "$E/x/c/g")" = 0 ] || fail "mapped-xattr: the host file's owner changed"
[ -f "$E/x/c/fifo" ] || fail "mapped-xattr: the fifo is not a regular file on the host"
echo "mapped-xattr: the guest's tree is on the host, owners and modes in user.virtfs.*"

MANY=100
# The long form, the device before its fsdev (the order is free) and with an id.
make_export "$E/l"
run_guest "long-form" -device virtio-9p-device,id=p9,fsdev=L,mount_tag=share \
    -fsdev "local,id=L,path=$E/l,security_model=mapped-xattr"
check_tree "long-form" "$E/l"
[ "$(xattr_u32 "$E/l/c/g" user.virtfs.uid)" = 1234 ] || fail "long-form: user.virtfs.uid of c/g is not 1234"
echo "long-form: -fsdev local,... -device virtio-9p-device,... mounts and serves the same tree"

# passthrough under -sandbox on: real owners, modes and special files on the host.
MANY=30
make_export "$E/p"
run_guest "passthrough" -virtfs "local,path=$E/p,mount_tag=share,security_model=passthrough"
check_tree "passthrough" "$E/p"
[ "$(stat -c '%u %g %a' "$E/p/c/g")" = "1234 5678 640" ] ||
  fail "passthrough: the host's owner and mode of c/g are '$(stat -c '%u %g %a' "$E/p/c/g")'"
[ -p "$E/p/c/fifo" ] || fail "passthrough: the fifo is not a fifo on the host"
grep -aq "lacks .* file capabilities" "$T/out" && fail "passthrough: fsd started without its capabilities"
echo "passthrough: the guest's owners, modes and fifo are the host's (-sandbox on)"

# socket=PATH: an fsd started on its own serves the export; vmmd starts no fsd.
make_export "$E/s"
"$BIN/fsd" --export "$E/s" --listen "unix:$T/fsd.sock" --security-model mapped-xattr 2>"$T/fsd.log" &
FSD_PID=$!
end=$((SECONDS + 10)); while [ "$SECONDS" -lt "$end" ]; do [ -S "$T/fsd.sock" ] && break; sleep 0.1; done
[ -S "$T/fsd.sock" ] || fail "standalone fsd did not listen: $(cat "$T/fsd.log")"
run_guest "socket" -fsdev "local,id=S,socket=$T/fsd.sock" -device virtio-9p-device,fsdev=S,mount_tag=share
check_tree "socket" "$E/s"
[ "$(xattr_u32 "$E/s/c/g" user.virtfs.uid)" = 1234 ] || fail "socket: user.virtfs.uid of c/g is not 1234"
grep -aq "fsd\[" "$T/console" && fail "socket: vmmd started an fsd helper of its own"
kill -TERM "$FSD_PID"; wait "$FSD_PID" || true; FSD_PID=
echo "socket: a standalone fsd reached through -fsdev local,socket= serves the guest"

SANDBOX=on
# readonly: the guest reads, cannot write.
make_export "$E/r"
run_guest "readonly" -virtfs "local,path=$E/r,mount_tag=share,security_model=mapped-xattr,readonly=on"
grep -aq "^GUEST-READONLY" "$T/console" || fail "readonly: the guest could write"
[ ! -e "$E/r/probe" ] || fail "readonly: a file appeared on the host"
echo "PASS: virtio-9p through fsd (mapped-xattr, readonly)"
