#!/usr/bin/env bash
# In the rig's L1: Debian's kernel, booted by vmmd, uses its virtio disks
# (served by blockd over NBD on the socketpairs vmmd made) and its virtio-rng:
#   vda  the target (qcow2 over a raw backing file, or raw), 16 MiB, serial set
#        with the deprecated -drive serial=
#   vdb  the guest's script (a raw image holding shell text), read-only
#   vdc  a host-made pattern (raw, 4 MiB of random bytes), readonly=on
# The guest copies vdc into vda at offset 1 MiB (reads the host's pattern,
# writes its own), prints checksums, the serials, whether a write to the
# read-only vdc is refused, and what /dev/hwrng gives (256 KiB of it saved
# to vdd, when given, for rngtest on the host); then powers off. The
# host checks the image with vmm-img and qemu-img (check clean, content equal
# to the pattern at 1 MiB, zero elsewhere), and -snapshot leaves a raw image
# unchanged. Last, blockd is killed with SIGKILL while the guest writes block
# after block with fsync: vmmd restarts it, vcpu-worker reconnects and
# resends, the guest's loop completes without an error and every block it
# saw acknowledged is in the image.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
command -v qemu-img >/dev/null || { echo "SKIP: qemu-img missing"; exit 77; }
T=$(mktemp -d /tmp/rig-disk.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
export TMPDIR=$T   # -snapshot's overlay; the rig's /var/tmp is read-only
fail() { echo "FAIL: $*" >&2; tail -40 "$T/out" >&2; grep -a -m1 "guest triple fault" "$T/out" >&2 || true; exit 1; }

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
if [ -b /dev/vdd ]; then
  $B dd if=/dev/hwrng of=/dev/vdd bs=1k count=256 conv=fsync 2>/dev/null && $B echo GUEST-HWRNG-SAVED
fi
exit 0
EOF
truncate -s 64K "$T/script.raw"
dd if="$T/script.sh" of="$T/script.raw" conv=notrunc status=none
# The write loop for the blockd restart: one 64 KiB block at a time, each
# acknowledged (fsync) before the next; a pause after block 4 for the kill.
cat >"$T/loop.sh" <<'EOF'
B=/bin/busybox
i=0
while [ $i -lt 64 ]; do
  $B dd if=/dev/vdc of=/dev/vda bs=64k count=1 skip=$i seek=$((16 + i)) conv=fsync 2>/dev/null || { $B echo "GUEST-LOOP-ERROR $i"; exit 0; }
  $B echo "GUEST-ACK $i"
  [ $i = 4 ] && $B sleep 3
  i=$((i + 1))
done
$B echo GUEST-LOOP-DONE
exit 0
EOF
truncate -s 64K "$T/loop.raw"
dd if="$T/loop.sh" of="$T/loop.raw" conv=notrunc status=none
head -c $((4 << 20)) /dev/urandom >"$T/pattern.raw"
PATTERN_MD5=$(md5sum <"$T/pattern.raw" | cut -d' ' -f1)

start_vmmd() { # VDA_FORMAT VDA_FILE SCRIPT_IMAGE [EXTRA...]
  local fmt=$1 file=$2 script=$3; shift 3
  setsid "$BIN/vmmd" -sandbox on,spawn=deny -kernel "$RIG_BZIMAGE" -initrd "$RIG_INITRAMFS_L2" -m 256M \
      -append "console=ttyS0 panic=-1 quiet vmm_l2_cmd=sh</dev/vdb" \
      -drive "file=$file,format=$fmt,if=none,id=d0,serial=OLD-SERIAL-1" -device virtio-blk-device,drive=d0 \
      -drive "file=$script,format=raw,if=none,id=d1,readonly=on" -device virtio-blk-device,drive=d1 \
      -drive "file=$T/pattern.raw,format=raw,if=none,id=d2,readonly=on" \
      -device virtio-blk-device,drive=d2,serial=NEW-SERIAL-2 \
      -object rng-random,id=r0,filename=/dev/urandom -device "virtio-rng-device,rng=r0${RNG_PROPS:-}" \
      "$@" -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
  PID=$!
}
wait_vmmd() { # LABEL: vmmd must end by itself with status 0
  local label=$1 rc=0
  end=$((SECONDS + 240)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$label: vmmd still running after 240 s"
  wait "$PID" || rc=$?
  PID=
  tr -d '\r' <"$T/out" >"$T/console"
  [ $rc -eq 0 ] || fail "$label: vmmd exited $rc"
}
guest() { grep -a "^$1" "$T/console" | tail -1 | cut -d' ' -f2-; }

boot() { # LABEL VDA_FORMAT VDA_FILE [EXTRA...]
  local label=$1; shift
  start_vmmd "$1" "$2" "$T/script.raw" "${@:3}"
  wait_vmmd "$label"
  [ "$(guest GUEST-VDC-MD5)" = "$PATTERN_MD5" ] || fail "$label: the guest read the host's pattern as $(guest GUEST-VDC-MD5)"
  [ "$(guest GUEST-SERIAL-VDA)" = OLD-SERIAL-1 ] || fail "$label: vda serial '$(guest GUEST-SERIAL-VDA)'"
  [ "$(guest GUEST-SERIAL-VDC)" = NEW-SERIAL-2 ] || fail "$label: vdc serial '$(guest GUEST-SERIAL-VDC)'"
  [ "$(guest GUEST-RO-VDC)" = 1 ] || fail "$label: vdc is not read-only in the guest"
  grep -aq "^GUEST-RO-WRITE-REFUSED" "$T/console" || fail "$label: a write to the read-only vdc was not refused"
  grep -aq "^GUEST-WRITE-OK" "$T/console" || fail "$label: the guest's write to vda failed"
  [ "$(guest GUEST-VDA-MD5)" = "$PATTERN_MD5" ] || fail "$label: the guest read back $(guest GUEST-VDA-MD5)"
  [ "$(guest GUEST-RNG)" = "virtio_rng.0 4096" ] || fail "$label: /dev/hwrng: '$(guest GUEST-RNG)'"
  grep -q "deprecated" "$T/out" || fail "$label: no deprecation warning for -drive serial="
  grep -aq "drive 'd0': data through guest memory" "$T/out" ||
    fail "$label: drive d0's data did not go through guest memory (docs/drives.md)"
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
qemu-img create -q -f raw "$T/rng.raw" 256K
boot "qcow2" qcow2 "$T/disk.qcow2" -drive "file=$T/rng.raw,format=raw,if=none,id=d3" \
  -device virtio-blk-device,drive=d3
qemu-img check -q "$T/disk.qcow2" || fail "qemu-img check found problems in the guest's qcow2"
# 256 KiB the guest read from /dev/hwrng: FIPS 140-2 (rngtest, 104 blocks). A
# block of good random data fails now and then (about 1 in 1000), so two are
# allowed; a device that repeated or zeroed data fails them all.
grep -aq "^GUEST-HWRNG-SAVED" "$T/console" || fail "the guest could not save /dev/hwrng output"
if command -v rngtest >/dev/null; then
  rngtest <"$T/rng.raw" >"$T/rngtest" 2>&1 || true
  fips_ok=$(sed -n 's/.*FIPS 140-2 successes: //p' "$T/rngtest")
  fips_bad=$(sed -n 's/.*FIPS 140-2 failures: //p' "$T/rngtest")
  [ "${fips_ok:-0}" -ge 100 ] && [ "${fips_bad:-99}" -le 2 ] || fail "rngtest on /dev/hwrng output: $(cat "$T/rngtest")"
  echo "qcow2: /dev/hwrng passes rngtest ($fips_ok of $((fips_ok + fips_bad)) blocks)"
else
  echo "note: rngtest (rng-tools5) is not installed: /dev/hwrng output not tested"
fi
expect_image qcow2 "$T/disk.qcow2"
head -c $((16 << 20)) /dev/zero >"$T/zero.raw"
cmp -s "$T/base.raw" "$T/zero.raw" || fail "the backing file was written"

# raw, then -snapshot: the guest writes, the image stays as it was. The raw
# boot's virtio-rng gives 1 KiB per 250 ms: the guest's 4 KiB come only if
# the device serves held-back requests when a period ends, without a kick.
qemu-img create -q -f raw "$T/disk.raw" 16M
RNG_PROPS=",max-bytes=1024,period=250" boot "raw" raw "$T/disk.raw"
expect_image raw "$T/disk.raw"
qemu-img create -q -f raw "$T/snap.raw" 16M
boot "raw -snapshot" raw "$T/snap.raw" -snapshot
cmp -s "$T/snap.raw" "$T/zero.raw" || fail "-snapshot: the image changed"

# blockd killed during the guest's write loop.
qemu-img create -q -f qcow2 "$T/loop.qcow2" 16M
start_vmmd qcow2 "$T/loop.qcow2" "$T/loop.raw"
end=$((SECONDS + 120)); while [ "$SECONDS" -lt "$end" ]; do grep -aq "^GUEST-ACK 4" "$T/out" && break; kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
grep -aq "^GUEST-ACK 4" "$T/out" || fail "restart: the guest's loop did not get going"
BLOCKD=$(pgrep -s "$PID" -x blockd | head -1)
[ -n "$BLOCKD" ] || fail "restart: no blockd in vmmd's session"
kill -KILL "$BLOCKD"
wait_vmmd "restart"
grep -aq "^GUEST-LOOP-ERROR" "$T/console" && fail "restart: the guest saw an I/O error: $(guest GUEST-LOOP-ERROR)"
grep -aq "^GUEST-LOOP-DONE" "$T/console" || fail "restart: the guest's loop did not complete"
[ "$(grep -ac "^GUEST-ACK" "$T/console")" = 64 ] ||
  fail "restart: $(grep -ac "^GUEST-ACK" "$T/console") blocks acknowledged, not 64:" \
       "$(grep -a "^GUEST-ACK" "$T/console" | sort | uniq -c | sort -rn | head -30 | tr '\n' ' ')"
grep -q "restarted\|restarting" "$T/out" || fail "restart: vmmd did not say it restarted blockd"
qemu-img check -q "$T/loop.qcow2" || fail "restart: qemu-img check found problems"
expect_image qcow2 "$T/loop.qcow2"
echo "restart: blockd killed mid-loop; the guest's 64 synchronous writes all completed and are in the image"
echo "PASS: guest disk I/O through blockd (qcow2 and raw), serials, read-only, -snapshot, virtio-rng"
