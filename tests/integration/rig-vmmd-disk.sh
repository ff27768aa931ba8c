#!/usr/bin/env bash
# In the rig's L1: Debian's kernel, booted by vmmd, uses its virtio disks
# (served by blockd over NBD on the socketpairs vmmd made) and its virtio-rng:
#   vda  the target (qcow2 over a raw backing file, or raw), 16 MiB, serial set
#        with the deprecated -drive serial=
#   vdb  the guest's script (a raw image holding shell text), read-only
#   vdc  a host-made pattern (raw, 4 MiB of random bytes), readonly=on
# The guest copies vdc into vda at offset 1 MiB (reads the host's pattern,
# writes its own), prints checksums, the serials, whether a write to the
# read-only vdc is refused, and what /dev/hwrng gives; then powers off. The
# host checks the image with vmm-img and qemu-img (check clean, content equal
# to the pattern at 1 MiB, zero elsewhere), and -snapshot leaves a raw image
# unchanged.
set -euo pipefail
# The same gate as rig-vmmd-boot.sh while early boot can triple-fault.
if [ -z "${VMM_BOOT_TEST:-}" ]; then
  echo "SKIP: known intermittent triple fault in early boot (issue 6); set VMM_BOOT_TEST=1 to run"
  exit 77
fi
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img missing"; exit 77; }
T=$(mktemp -d /tmp/rig-disk.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tail -40 "$T/out" >&2; exit 1; }

# The guest's side. busybox only; `exit` so that sh never reads the zeroes
# after the text.
cat >"$T/script.sh" <<'EOF'
B=/bin/busybox
$B echo "GUEST-DISKS $($B ls /sys/block | $B tr '\n' ' ')"
$B echo "GUEST-SERIAL-VDA $($B cat /sys/block/vda/serial 2>/dev/null)"
$B echo "GUEST-SERIAL-VDC $($B cat /sys/block/vdc/serial 2>/dev/null)"
$B echo "GUEST-RO-VDC $($B cat /sys/block/vdc/ro)"
$B echo "GUEST-VDC-MD5 $($B dd if=/dev/vdc bs=64k count=64 2>/dev/null | $B md5sum | $B cut -d' ' -f1)"
$B dd if=/dev/vdc of=/dev/vda bs=64k count=64 seek=16 conv=fsync 2>/dev/null && $B echo GUEST-WRITE-OK
$B sync
$B echo "GUEST-VDA-MD5 $($B dd if=/dev/vda bs=64k count=64 skip=16 iflag=direct 2>/dev/null | $B md5sum | $B cut -d' ' -f1)"
if $B dd if=/dev/zero of=/dev/vdc bs=4k count=1 conv=fsync 2>/dev/null; then $B echo GUEST-RO-WRITE-ACCEPTED; else $B echo GUEST-RO-WRITE-REFUSED; fi
$B echo "GUEST-RNG $($B cat /sys/class/misc/hw_random/rng_current 2>/dev/null) $($B dd if=/dev/hwrng bs=1k count=4 2>/dev/null | $B wc -c)"
exit 0
EOF
truncate -s 64K "$T/script.raw"
dd if="$T/script.sh" of="$T/script.raw" conv=notrunc status=none
head -c $((4 << 20)) /dev/urandom >"$T/pattern.raw"
PATTERN_MD5=$(md5sum <"$T/pattern.raw" | cut -d' ' -f1)

boot() { # LABEL VDA_FORMAT VDA_FILE [EXTRA...]
  local label=$1 fmt=$2 file=$3 rc=0; shift 3
  setsid "$BIN/vmmd" -sandbox on,spawn=deny -kernel "$RIG_BZIMAGE" -initrd "$RIG_INITRAMFS_L2" -m 256M \
      -append "console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vdb" \
      -drive "file=$file,format=$fmt,if=none,id=d0,serial=OLD-SERIAL-1" -device virtio-blk-device,drive=d0 \
      -drive "file=$T/script.raw,format=raw,if=none,id=d1,readonly=on" -device virtio-blk-device,drive=d1 \
      -drive "file=$T/pattern.raw,format=raw,if=none,id=d2,readonly=on" \
      -device virtio-blk-device,drive=d2,serial=NEW-SERIAL-2 \
      -object rng-random,id=r0,filename=/dev/urandom -device virtio-rng-device,rng=r0 \
      "$@" -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
  PID=$!
  for _ in $(seq 2400); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$label: vmmd still running after 240 s"
  wait "$PID" || rc=$?
  PID=
  tr -d '\r' <"$T/out" >"$T/console"
  [ $rc -eq 0 ] || fail "$label: vmmd exited $rc"
  guest() { grep -a "^$1" "$T/console" | tail -1 | cut -d' ' -f2-; }
  [ "$(guest GUEST-VDC-MD5)" = "$PATTERN_MD5" ] || fail "$label: the guest read the host's pattern as $(guest GUEST-VDC-MD5)"
  [ "$(guest GUEST-SERIAL-VDA)" = OLD-SERIAL-1 ] || fail "$label: vda serial '$(guest GUEST-SERIAL-VDA)'"
  [ "$(guest GUEST-SERIAL-VDC)" = NEW-SERIAL-2 ] || fail "$label: vdc serial '$(guest GUEST-SERIAL-VDC)'"
  [ "$(guest GUEST-RO-VDC)" = 1 ] || fail "$label: vdc is not read-only in the guest"
  grep -aq "^GUEST-RO-WRITE-REFUSED" "$T/console" || fail "$label: a write to the read-only vdc was not refused"
  grep -aq "^GUEST-WRITE-OK" "$T/console" || fail "$label: the guest's write to vda failed"
  [ "$(guest GUEST-VDA-MD5)" = "$PATTERN_MD5" ] || fail "$label: the guest read back $(guest GUEST-VDA-MD5)"
  [ "$(guest GUEST-RNG)" = "virtio_rng.0 4096" ] || fail "$label: /dev/hwrng: '$(guest GUEST-RNG)'"
  grep -q "deprecated" "$T/out" || fail "$label: no deprecation warning for -drive serial="
  echo "$label: the guest read the host's pattern, wrote it to vda, saw serials, read-only and hwrng"
}

# The host's view of what the guest wrote: PATTERN at 1 MiB, zeroes elsewhere.
expect_image() { # FORMAT FILE
  head -c $((16 << 20)) /dev/zero >"$T/expect.raw"
  dd if="$T/pattern.raw" of="$T/expect.raw" bs=1M seek=1 conv=notrunc status=none
  qemu-img compare -f "$1" -F raw "$2" "$T/expect.raw" >/dev/null || fail "qemu-img compare: $2 is not the pattern at 1 MiB"
  "$BIN/vmm-img" compare -f "$1" -F raw "$2" "$T/expect.raw" >/dev/null || fail "vmm-img compare: $2 is not the pattern at 1 MiB"
}

# qcow2 over a raw backing file.
qemu-img create -q -f raw "$T/base.raw" 16M
qemu-img create -q -f qcow2 -b "$T/base.raw" -F raw "$T/disk.qcow2"
boot "qcow2" qcow2 "$T/disk.qcow2"
qemu-img check -q "$T/disk.qcow2" || fail "qemu-img check found problems in the guest's qcow2"
expect_image qcow2 "$T/disk.qcow2"
cmp -s "$T/base.raw" <(head -c $((16 << 20)) /dev/zero) || fail "the backing file was written"

# raw, then -snapshot: the guest writes, the image stays as it was.
qemu-img create -q -f raw "$T/disk.raw" 16M
boot "raw" raw "$T/disk.raw"
expect_image raw "$T/disk.raw"
qemu-img create -q -f raw "$T/snap.raw" 16M
boot "raw -snapshot" raw "$T/snap.raw" -snapshot
cmp -s "$T/snap.raw" <(head -c $((16 << 20)) /dev/zero) || fail "-snapshot: the image changed"
echo "PASS: guest disk I/O through blockd (qcow2 and raw), serials, read-only, -snapshot, virtio-rng"
