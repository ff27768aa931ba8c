#!/usr/bin/env bash
# In the rig's L1: the Linux kernel's NBD client (nbd.ko via Debian's
# nbd-client) on a blockd export with qcow2 underneath. mkfs.ext4, a tree copied
# in, fsck clean, and the tree read back after blockd is restarted.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
SRC=${VMM_SOURCE_DIR:?}
command -v nbd-client >/dev/null || { echo "SKIP: nbd-client not installed"; exit 77; }
[ -b /dev/nbd0 ] || { echo "FAIL: no /dev/nbd0 (nbd.ko not loaded?)"; exit 1; }
T=$(mktemp -d /tmp/rig-nbd.XXXXXX)
PID=
cleanup() {
  mountpoint -q "$T/mnt" 2>/dev/null && umount "$T/mnt" || true
  nbd-client -d /dev/nbd0 >/dev/null 2>&1 || true
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/blockd.log" ] && cat "$T/blockd.log" >&2; exit 1; }
serve() {
  rm -f "$T/nbd.sock"
  "$BIN/blockd" -k "$T/nbd.sock" -f qcow2 -x disk -t "$T/disk.qcow2" 2>>"$T/blockd.log" &
  PID=$!
  for _ in $(seq 100); do [ -S "$T/nbd.sock" ] && return 0; sleep 0.1; done
  fail "blockd did not listen"
}
attach() {
  nbd-client -u "$T/nbd.sock" /dev/nbd0 -N disk -b 4096 >/dev/null 2>&1 || fail "nbd-client could not attach"
  for _ in $(seq 50); do [ "$(cat /sys/block/nbd0/size)" -gt 0 ] && return 0; sleep 0.1; done
  fail "/dev/nbd0 has no size"
}

qemu-img create -q -f qcow2 "$T/disk.qcow2" 256M
mkdir "$T/mnt"
serve
attach
[ "$(cat /sys/block/nbd0/size)" -eq $((256 * 2048)) ] || fail "size $(cat /sys/block/nbd0/size) sectors"
mkfs.ext4 -q -F /dev/nbd0 || fail "mkfs.ext4"
mount /dev/nbd0 "$T/mnt" || fail "mount"
cp -a "$SRC/docs" "$SRC/common" "$T/mnt/" || fail "copy"
(cd "$SRC" && tar --sort=name -cf - docs common | sha256sum) >"$T/want"
umount "$T/mnt"
fsck.ext4 -n -f /dev/nbd0 >"$T/fsck" 2>&1 || fail "fsck not clean: $(cat "$T/fsck")"
nbd-client -d /dev/nbd0 >/dev/null 2>&1
kill -TERM "$PID"; wait "$PID" || true; PID=
qemu-img check -q "$T/disk.qcow2" || fail "qemu-img check after the kernel's writes"

# blockd restarted: the tree reads back.
serve
attach
mount -o ro /dev/nbd0 "$T/mnt" || fail "mount after restart"
(cd "$T/mnt" && tar --sort=name -cf - docs common | sha256sum) >"$T/got"
cmp -s "$T/want" "$T/got" || fail "tree differs after restart"
diff -r "$SRC/docs" "$T/mnt/docs" >/dev/null || fail "diff -r docs"
umount "$T/mnt"
echo "PASS: kernel NBD client on blockd (qcow2): mkfs, copy, fsck, read back after restart"
