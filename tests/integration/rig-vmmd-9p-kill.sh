#!/usr/bin/env bash
# In the rig's L1: fsd is killed with SIGKILL while the guest writes files on
# its virtio-9p mount. What the issue asks for when the guest's fids cannot be
# re-established safely (docs/fsdev.md, "fsd restart"): vmmd restarts fsd, the
# guest's writes fail with an I/O error instead of hanging, the operator gets
# QMP FSDEV_IO_ERROR, and the guest can mount the tag again (once fsd is
# back: a mount before that fails at once) and go on.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
T=$(mktemp -d /tmp/rig-9pkill.XXXXXX)
PID= EV=
cleanup() {
  for p in $PID $EV; do kill -KILL "$p" 2>/dev/null || true; done
  mountpoint -q "$T/share" 2>/dev/null && umount "$T/share"
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tr -d '\r' <"$T/out" | tail -40 >&2; grep -a -m1 "guest triple fault" "$T/out" >&2 || true; exit 1; }
Q() { "$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 20 "$@"; }
console() { tr -d '\r' <"$T/out" >"$T/console" 2>/dev/null || : >"$T/console"; }
has() { console; grep -aq "^$1" "$T/console"; }
guest() { console; { grep -a "^$1" "$T/console" || true; } | tail -1 | cut -d' ' -f2-; }
wait_has() { # TEXT SECONDS
  local end=$((SECONDS + $2)); while [ "$SECONDS" -lt "$end" ]; do
    has "$1" && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# The export lives on ext4: L1's /tmp is a tmpfs, which has no user.* xattrs.
truncate -s 64M "$T/fs.img"
mkfs.ext4 -q -F "$T/fs.img"
mkdir "$T/share"
mount -o loop "$T/fs.img" "$T/share" || fail "loop mount of the ext4 image"

# The guest writes one file every 0.2 s until a write fails (or 600 files),
# then mounts the tag again and writes once more.
cat >"$T/script.sh" <<'EOF'
B=/bin/busybox
$B mkdir -p /mnt
$B mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /mnt || { $B echo GUEST-MOUNT-FAILED; exit 0; }
$B echo GUEST-LOOP-STARTED
i=0
while [ $i -lt 600 ]; do
  if ! err=$($B sh -c "$B echo 'file $i' >/mnt/f$i" 2>&1); then
    $B echo "GUEST-IO-ERROR $i $err"
    break
  fi
  i=$((i + 1))
  $B sleep 0.2
done
[ $i -eq 600 ] && $B echo GUEST-NO-ERROR
$B umount -l /mnt
# Until vmmd has fsd back (a restart takes a while under TCG), a mount gets
# EIO at once: try again for up to 60 s, as a user would.
n=0
until $B mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 share /mnt 2>/dev/null; do
  n=$((n + 1))
  [ $n -ge 60 ] && { $B echo GUEST-REMOUNT-FAILED; exit 0; }
  $B sleep 1
done
$B echo "GUEST-REMOUNT-TRIES $n"
$B echo after-restart >/mnt/after && $B echo "GUEST-REMOUNT-OK $($B cat /mnt/after) $($B ls /mnt | $B wc -l)"
$B umount /mnt
exit 0
EOF
truncate -s 64K "$T/script.raw"
dd if="$T/script.sh" of="$T/script.raw" conv=notrunc status=none

setsid "$BIN/vmmd" -sandbox on,spawn=deny -kernel "$RIG_BZIMAGE" -initrd "$RIG_INITRAMFS_L2" -m 256M \
    -append "console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vda" \
    -drive "file=$T/script.raw,format=raw,if=none,id=d0,readonly=on" -device virtio-blk-device,drive=d0 \
    -virtfs "local,path=$T/share,mount_tag=share,security_model=mapped-xattr,id=share" \
    -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
PID=$!
wait_has GUEST-LOOP-STARTED 240 || fail "the guest did not start its write loop"
has GUEST-MOUNT-FAILED && fail "the guest could not mount the share"
sleep 2
Q query-helpers >"$T/helpers" || fail "query-helpers failed"
fsd=$(jq -r '.[] | select(.helper == "fsd") | .pid' "$T/helpers")
[ -n "$fsd" ] && [ "$fsd" != null ] || fail "no fsd in query-helpers"
"$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 120 --wait-event FSDEV_IO_ERROR >"$T/event" 2>&1 &
EV=$!
sleep 1
kill -KILL "$fsd"
echo "killed fsd (pid $fsd) during the guest's writes"
wait_has GUEST-IO-ERROR 90 || fail "the guest's writes did not fail after fsd died (hung?)"
wait_has "GUEST-REMOUNT" 120 || fail "the guest did not mount the tag again"
end=$((SECONDS + 60)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PID" 2>/dev/null && fail "vmmd still running after the guest's script"
rc=0; wait "$PID" || rc=$?; PID=
[ "$rc" -eq 0 ] || fail "vmmd exited $rc"
rc=0; wait "$EV" || rc=$?; EV=
[ "$rc" -eq 0 ] || fail "no FSDEV_IO_ERROR event: $(cat "$T/event")"
grep -q '"mount-tag": *"share"' "$T/event" || fail "FSDEV_IO_ERROR without the mount tag: $(cat "$T/event")"
has GUEST-NO-ERROR && fail "the guest never saw an error"
console
[ "$(grep -c "helper fsd (pid" "$T/console")" -ge 2 ] || fail "fsd was not started again"
after=$(guest GUEST-REMOUNT-OK)
case $after in "after-restart "*) ;; *) fail "the guest's write after the remount: '$after'" ;; esac
[ "$(cat "$T/share/after")" = after-restart ] || fail "the host does not see the guest's file written after the remount"
n=$(guest GUEST-IO-ERROR | cut -d' ' -f1)
for i in $(seq 0 $((n - 1))); do
  [ "$(cat "$T/share/f$i" 2>/dev/null)" = "file $i" ] || fail "f$i, written before the kill, is not on the host"
done
echo "PASS: fsd killed after $n guest writes: the guest got an I/O error ($(guest GUEST-IO-ERROR | cut -d' ' -f2-)), FSDEV_IO_ERROR was sent, fsd came back and the guest mounted the tag again"
