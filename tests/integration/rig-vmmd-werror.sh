#!/usr/bin/env bash
# In the rig's L1: -drive werror=/rerror= as QEMU 7.2 does them, with Debian's
# kernel writing to its virtio disks through blockd.
#
# Part 1 (ENOSPC): the images live on a tiny tmpfs that a filler file fills up.
#   d0 (vda) has QEMU's default werror=enospc, d2 (vdc) werror=report, d3
#   (vdd) werror=ignore; d4 (vde) holds a random pattern, d1 (vdb) the
#   guest's script. The guest writes to vdc (must see EIO, the VM runs on),
#   to vdd (must see success), then copies 2 MiB of the pattern to vda, 64 KiB
#   at a time with O_DIRECT and fsync. The first write to vda stops the VM:
#   BLOCK_IO_ERROR (action stop, nospace true) then STOP, query-status
#   io-error, query-block io-status nospace, HMP "paused (io-error)"; stop
#   changes nothing; cont without room retries, fails, stops again; cont
#   after the filler is gone retries with success: the guest's loop ends
#   without an error, the data is in the image, io-status is ok again.
# Part 2 (EIO): a drive on /dev/nbd0 (the kernel's NBD client connected to
#   nbdkit's error filter, errors switched by trigger files) with
#   rerror=stop,werror=stop: the guest's read at boot stops the VM
#   (operation read, nospace false, io-status failed), cont after the
#   trigger is gone resumes the boot; the guest's write stops it again
#   (operation write); cont after that trigger is gone completes the write.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
command -v jq >/dev/null || { echo "SKIP: jq is not installed"; exit 77; }
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
T=$(mktemp -d /tmp/rig-werror.XXXXXX)
PID= MON= NBDKIT= SMALL= NBDDEV=
cleanup() {
  exec 3>&-
  for p in $PID $MON; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "$NBDDEV" ] && nbd-client -d "$NBDDEV" >/dev/null 2>&1 || true
  [ -n "$NBDKIT" ] && kill -TERM "$NBDKIT" 2>/dev/null || true
  [ -n "$SMALL" ] && umount "$SMALL" 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- vmmd and console:" >&2; tr -d '\r' <"$T/out" 2>/dev/null | tail -40 >&2
  echo "--- QMP events and replies:" >&2; cat "$T/events" 2>/dev/null | tail -30 >&2
  grep -a -m1 "guest triple fault" "$T/out" >&2 || true
  exit 1
}
Q() { "$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 60 "$@"; }
# No pipes into grep -q (pipefail and SIGPIPE) and no <(...) (L1 has no /dev/fd).
count() { grep -c -- "$2" "$1" 2>/dev/null || true; }
console() { tr -d '\r' <"$T/out" >"$T/console" 2>/dev/null || : >"$T/console"; echo "$T/console"; }
guest() { grep -a "^$1" "$(console)" | tail -1 | cut -d' ' -f2-; }
wait_count() { # FILE TEXT N SECONDS: TEXT in at least N lines of FILE
  local end=$((SECONDS + $4)); while [ "$SECONDS" -lt "$end" ]; do
    [ "$(count "$1" "$2")" -ge "$3" ] && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_console() { # TEXT SECONDS
  local end=$((SECONDS + $2)); while [ "$SECONDS" -lt "$end" ]; do
    grep -aq -- "$1" "$(console)" && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_exit() { # LABEL: vmmd must end by itself with status 0
  end=$((SECONDS + 300)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$1: vmmd still running after 300 s"
  local rc=0
  wait "$PID" || rc=$?
  PID=
  exec 3>&-
  wait "$MON" 2>/dev/null || true
  MON=
  [ $rc -eq 0 ] || fail "$1: vmmd exited $rc"
}
# The Nth line of the event log that holds all of the given texts.
event_line() { # N TEXT...
  local n=$1; shift
  local pat=$1; shift
  local lines
  lines=$(grep -n -- "$pat" "$T/events" || true)
  for p in "$@"; do lines=$(echo "$lines" | grep -- "$p" || true); done
  echo "$lines" | sed -n "${n}p"
}
line_no() { echo "${1%%:*}"; }
status_is() { # STATUS: query-status says it (and running false unless "running")
  local s
  s=$(Q query-status)
  local running=false
  [ "$1" = running ] && running=true
  case $s in *"\"status\":\"$1\""*"\"running\":$running"*) return 0 ;; esac
  echo "query-status: $s" >&2
  return 1
}
io_status() { # DEVICE: query-block's io-status of DEVICE ("none" when absent)
  local b
  b=$(Q query-block)
  echo "$b" | jq -r --arg d "$1" '.[] | select(.device == $d) | ."io-status" // "none"'
}

# vmmd with -S and a QMP client that logs every event from the start; cont
# is sent once the client is in, so no event can be missed.
start_vmmd() { # APPEND DRIVE-ARGS...
  local append=$1; shift
  rm -f "$T/qmp.sock" "$T/qmp.in"
  : >"$T/events"
  setsid "$BIN/vmmd" -sandbox on,spawn=deny -S -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" -m 256M \
      -append "console=ttyS0 panic=-1 quiet $append" "$@" \
      -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
  PID=$!
  end=$((SECONDS + 60)); while [ "$SECONDS" -lt "$end" ]; do [ -S "$T/qmp.sock" ] && break; sleep 0.1; done
  [ -S "$T/qmp.sock" ] || fail "no QMP socket"
  mkfifo "$T/qmp.in"
  "$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 0 -i <"$T/qmp.in" >"$T/events" 2>&1 &
  MON=$!
  exec 3>"$T/qmp.in"
  echo query-status >&3
  wait_count "$T/events" '"status":"prelaunch"' 1 60 || fail "the QMP event client did not get in"
  echo cont >&3
}
# Sends cont on the event client and waits for the RESUME it causes.
cont() { # LABEL
  local n
  n=$(count "$T/events" '"event":"RESUME"')
  echo cont >&3
  wait_count "$T/events" '"event":"RESUME"' $((n + 1)) 60 || fail "$1: cont sent no RESUME"
}

# ---- Part 1: ENOSPC on a full tmpfs ---------------------------------------------

cat >"$T/script.sh" <<'EOF'
B=/bin/busybox
if $B dd if=/dev/vde of=/dev/vdc bs=64k count=1 oflag=direct 2>/dev/null; then $B echo "GUEST-REPORT NOERROR"; else $B echo "GUEST-REPORT EIO"; fi
if $B dd if=/dev/vde of=/dev/vdd bs=64k count=1 oflag=direct 2>/dev/null; then $B echo "GUEST-IGNORE OK"; else $B echo "GUEST-IGNORE EIO"; fi
$B echo GUEST-LOOP-START
i=0
while [ $i -lt 32 ]; do
  $B dd if=/dev/vde of=/dev/vda bs=64k count=1 skip=$i seek=$i oflag=direct conv=fsync 2>/dev/null || { $B echo "GUEST-LOOP-ERROR $i"; exit 0; }
  i=$((i + 1))
done
$B echo GUEST-LOOP-DONE
$B echo "GUEST-VDA-MD5 $($B dd if=/dev/vda bs=64k count=32 iflag=direct 2>/dev/null | $B md5sum | $B cut -d' ' -f1)"
exit 0
EOF
truncate -s 64K "$T/script.raw"
dd if="$T/script.sh" of="$T/script.raw" conv=notrunc status=none
head -c $((2 << 20)) /dev/urandom >"$T/pattern.raw"
PATTERN_MD5=$(md5sum <"$T/pattern.raw" | cut -d' ' -f1)

mkdir "$T/small"
if ! mount -t tmpfs -o size=8m,mode=0700 tmpfs "$T/small" 2>"$T/mount.err"; then
  echo "SKIP: cannot mount a small tmpfs for the ENOSPC test: $(cat "$T/mount.err")"
  exit 77
fi
SMALL=$T/small
for f in vda vdc vdd; do truncate -s 16M "$SMALL/$f.raw"; done
# Fill it up: every write into the sparse images now fails with ENOSPC.
dd if=/dev/zero of="$SMALL/filler" bs=64k status=none 2>/dev/null || true
[ "$(df -k --output=avail "$SMALL" | tail -1 | tr -d ' ')" -eq 0 ] || fail "the tmpfs is not full"

start_vmmd "vmm_l2=wait-powerdown vmm_l2_cmd=sh</dev/vdb" \
  -drive "file=$SMALL/vda.raw,format=raw,if=none,id=d0" -device virtio-blk-device,drive=d0 \
  -drive "file=$T/script.raw,format=raw,if=none,id=d1,readonly=on" -device virtio-blk-device,drive=d1 \
  -drive "file=$SMALL/vdc.raw,format=raw,if=none,id=d2,werror=report" -device virtio-blk-device,drive=d2 \
  -drive "file=$SMALL/vdd.raw,format=raw,if=none,id=d3,werror=ignore" -device virtio-blk-device,drive=d3 \
  -drive "file=$T/pattern.raw,format=raw,if=none,id=d4,readonly=on" -device virtio-blk-device,drive=d4

wait_count "$T/events" '"event":"STOP"' 1 400 || fail "enospc: no STOP"
ev_report=$(event_line 1 '"event":"BLOCK_IO_ERROR"' '"device":"d2"')
ev_ignore=$(event_line 1 '"event":"BLOCK_IO_ERROR"' '"device":"d3"')
ev_stop=$(event_line 1 '"event":"BLOCK_IO_ERROR"' '"device":"d0"')
stop1=$(event_line 1 '"event":"STOP"')
echo "events: ${ev_report#*:}"
echo "        ${ev_ignore#*:}"
echo "        ${ev_stop#*:}"
echo "        ${stop1#*:}"
case ${ev_report#*:} in
  *'"data":{"device":"d2","node-name":"d2","operation":"write","action":"report","reason":"No space left on device"}'*) ;;
  *) fail "werror=report: BLOCK_IO_ERROR: '$ev_report'" ;;
esac
case ${ev_ignore#*:} in
  *'"data":{"device":"d3","node-name":"d3","operation":"write","action":"ignore","reason":"No space left on device"}'*) ;;
  *) fail "werror=ignore: BLOCK_IO_ERROR: '$ev_ignore'" ;;
esac
case ${ev_stop#*:} in
  *'"data":{"device":"d0","node-name":"d0","operation":"write","action":"stop","nospace":true,"reason":"No space left on device"}'*) ;;
  *) fail "werror=enospc: BLOCK_IO_ERROR: '$ev_stop'" ;;
esac
[ "$(line_no "$ev_stop")" -lt "$(line_no "$stop1")" ] || fail "STOP came before BLOCK_IO_ERROR (QEMU sends it after)"
[ "$(guest GUEST-REPORT)" = EIO ] || fail "werror=report: the guest's write did not fail: $(guest GUEST-REPORT)"
[ "$(guest GUEST-IGNORE)" = OK ] || fail "werror=ignore: the guest's write failed: $(guest GUEST-IGNORE)"
grep -aq "^GUEST-LOOP-START" "$(console)" || fail "the guest did not run on after the report and ignore errors"
grep -aq "^GUEST-LOOP-ERROR" "$(console)" && fail "enospc: the guest saw the error: $(guest GUEST-LOOP-ERROR)"
[ "$(count "$T/events" '"event":"STOP"')" -eq 1 ] || fail "enospc: more than one STOP"
echo "report: the guest saw EIO and ran on; ignore: the guest saw success"

status_is io-error || fail "enospc: not in io-error"
[ "$(io_status d0)" = nospace ] || fail "enospc: d0 io-status '$(io_status d0)', not nospace"
[ "$(io_status d2)" = none ] || fail "werror=report: query-block has io-status '$(io_status d2)' (QEMU has none)"
Q human-monitor-command command-line="info status" | grep -q 'VM status: paused (io-error)' ||
  fail "HMP info status: $(Q human-monitor-command command-line="info status")"
Q stop >/dev/null || fail "stop in io-error failed"
status_is io-error || fail "stop changed the io-error state"
echo "enospc: BLOCK_IO_ERROR then STOP, io-error, io-status nospace"

# cont while the tmpfs is still full: the request is retried, fails, stops again.
cont "retry"
wait_count "$T/events" '"event":"STOP"' 2 120 || fail "retry without room: no second STOP"
[ -n "$(event_line 2 '"event":"BLOCK_IO_ERROR"' '"device":"d0"' '"action":"stop"')" ] ||
  fail "retry without room: no second BLOCK_IO_ERROR"
status_is io-error || fail "retry without room: not in io-error"
grep -aq "^GUEST-LOOP-ERROR" "$(console)" && fail "retry without room: the guest saw the error"
echo "enospc: cont without room retried and stopped again"

rm -f "$SMALL/filler"
cont "room"
status_is running || fail "cont: not running"
wait_console "^GUEST-VDA-MD5" 400 || fail "enospc: the guest's loop did not complete after cont"
grep -aq "^GUEST-LOOP-ERROR" "$(console)" && fail "enospc: the guest saw an error: $(guest GUEST-LOOP-ERROR)"
grep -aq "^GUEST-LOOP-DONE" "$(console)" || fail "enospc: no GUEST-LOOP-DONE"
[ "$(guest GUEST-VDA-MD5)" = "$PATTERN_MD5" ] || fail "enospc: the guest read back $(guest GUEST-VDA-MD5)"
cmp -s -n $((2 << 20)) "$T/pattern.raw" "$SMALL/vda.raw" || fail "enospc: the image does not hold the guest's data"
[ "$(io_status d0)" = ok ] || fail "cont: d0 io-status '$(io_status d0)', not ok"
[ "$(count "$T/events" '"event":"STOP"')" -eq 2 ] || fail "enospc: STOPs after the space was freed"
Q system_powerdown >/dev/null || fail "system_powerdown"
wait_exit "enospc"
echo "enospc: cont after freeing space: the guest's 32 writes completed, the data is in the image"

# ---- Part 2: EIO from nbdkit's error filter ------------------------------------

if ! command -v nbdkit >/dev/null || ! command -v nbd-client >/dev/null || [ ! -b /dev/nbd0 ]; then
  echo "note: no nbdkit, nbd-client or /dev/nbd0: the EIO part (rerror/werror=stop) is skipped"
  echo "PASS: werror=enospc stop/cont/retry, report, ignore"
  exit 0
fi
nbdkit -f -U "$T/nbdkit.sock" --filter=error memory 16M \
  error=EIO error-pread-rate=100% error-pread-file="$T/fail-read" \
  error-pwrite-rate=100% error-pwrite-file="$T/fail-write" >"$T/nbdkit.log" 2>&1 &
NBDKIT=$!
end=$((SECONDS + 10)); while [ "$SECONDS" -lt "$end" ]; do [ -S "$T/nbdkit.sock" ] && break; sleep 0.1; done
[ -S "$T/nbdkit.sock" ] || fail "nbdkit did not start: $(cat "$T/nbdkit.log")"
nbd-client -b 512 -u "$T/nbdkit.sock" /dev/nbd0 >"$T/nbd-client.log" 2>&1 ||
  fail "nbd-client: $(cat "$T/nbd-client.log")"
NBDDEV=/dev/nbd0
touch "$T/fail-read" "$T/fail-write"

cat >"$T/script2.sh" <<'EOF'
B=/bin/busybox
$B echo GUEST-EIO-BOOTED
if $B dd if=/dev/vdc of=/dev/vda bs=64k count=4 oflag=direct conv=fsync 2>/dev/null; then $B echo "GUEST-EIO-WRITE OK"; else $B echo "GUEST-EIO-WRITE ERROR"; fi
$B echo "GUEST-EIO-MD5 $($B dd if=/dev/vda bs=64k count=4 iflag=direct 2>/dev/null | $B md5sum | $B cut -d' ' -f1)"
exit 0
EOF
truncate -s 64K "$T/script2.raw"
dd if="$T/script2.sh" of="$T/script2.raw" conv=notrunc status=none
PART_MD5=$(head -c $((256 << 10)) "$T/pattern.raw" | md5sum | cut -d' ' -f1)

# cache=none: blockd's reads and writes reach /dev/nbd0 at once (O_DIRECT).
start_vmmd "vmm_l2=wait-powerdown vmm_l2_cmd=sh</dev/vdb" \
  -drive "file=/dev/nbd0,format=raw,if=none,id=e0,cache=none,rerror=stop,werror=stop" \
  -device virtio-blk-device,drive=e0 \
  -drive "file=$T/script2.raw,format=raw,if=none,id=e1,readonly=on" -device virtio-blk-device,drive=e1 \
  -drive "file=$T/pattern.raw,format=raw,if=none,id=e2,readonly=on" -device virtio-blk-device,drive=e2

# The guest kernel reads vda's partition table as it probes the disk.
wait_count "$T/events" '"event":"STOP"' 1 400 || fail "rerror=stop: no STOP"
ev_read=$(event_line 1 '"event":"BLOCK_IO_ERROR"' '"device":"e0"')
echo "events: ${ev_read#*:}"
case ${ev_read#*:} in
  *'"data":{"device":"e0","node-name":"e0","operation":"read","action":"stop","nospace":false,"reason":"Input/output error"}'*) ;;
  *) fail "rerror=stop: BLOCK_IO_ERROR: '$ev_read'" ;;
esac
status_is io-error || fail "rerror=stop: not in io-error"
[ "$(io_status e0)" = failed ] || fail "rerror=stop: io-status '$(io_status e0)', not failed"
grep -aq "^GUEST-EIO-BOOTED" "$(console)" && fail "rerror=stop: the guest booted past the failed read"
rm -f "$T/fail-read"
cont "read retry"
wait_console "^GUEST-EIO-BOOTED" 400 || fail "rerror=stop: the guest did not boot on after cont"
echo "rerror=stop: a failed read at boot stopped the VM; cont retried it"

wait_count "$T/events" '"event":"STOP"' 2 400 || fail "werror=stop: no STOP for the write"
ev_write=$(event_line 1 '"event":"BLOCK_IO_ERROR"' '"device":"e0"' '"operation":"write"')
echo "events: ${ev_write#*:}"
case ${ev_write#*:} in
  *'"data":{"device":"e0","node-name":"e0","operation":"write","action":"stop","nospace":false,"reason":"Input/output error"}'*) ;;
  *) fail "werror=stop: BLOCK_IO_ERROR: '$ev_write'" ;;
esac
status_is io-error || fail "werror=stop: not in io-error"
[ "$(io_status e0)" = failed ] || fail "werror=stop: io-status '$(io_status e0)', not failed"
rm -f "$T/fail-write"
cont "write retry"
wait_console "^GUEST-EIO-MD5" 400 || fail "werror=stop: the guest's write did not complete after cont"
[ "$(guest GUEST-EIO-WRITE)" = OK ] || fail "werror=stop: the guest saw $(guest GUEST-EIO-WRITE)"
[ "$(guest GUEST-EIO-MD5)" = "$PART_MD5" ] || fail "werror=stop: the guest read back $(guest GUEST-EIO-MD5)"
[ "$(io_status e0)" = ok ] || fail "werror=stop: io-status after cont '$(io_status e0)'"
Q system_powerdown >/dev/null || fail "system_powerdown"
wait_exit "eio"
got=$(dd if=/dev/nbd0 bs=64k count=4 iflag=direct status=none | md5sum | cut -d' ' -f1)
[ "$got" = "$PART_MD5" ] || fail "werror=stop: nbdkit's disk holds $got"
echo "werror=stop: a failed write stopped the VM; cont retried it and the data reached the backend"
echo "PASS: werror=enospc/stop and rerror=stop stop the VM (io-error) until cont retries; report and ignore"
