#!/usr/bin/env bash
# The VM's disks through the process split, without a guest (this host's KVM
# cannot boot Linux): vmmd opens the images, blockd serves them over NBD on a
# socketpair from the fds it was handed, vcpu-worker's NBD client completes
# the handshake. One case per run:
#   serve      -drive (qcow2 with a backing file, raw, snapshot=on) and
#              -blockdev/-device: query-block shows every drive connected, as
#              QEMU shapes it; blockd holds the images but may open no path
#   restart    blockd killed: restarted, the drives served again, vcpu-worker
#              reconnected, vmmd still running
#   bad-drive  a bad -drive (QEMU's message) and a missing image: exit 1,
#              nothing left running
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
CASE=${1:-serve}
T=$(mktemp -d /tmp/vmm-drives.XXXXXX)
SOCK=$T/qmp.sock
VMMD_PID=

leftovers() {
  # Processes still in vmmd's session (setsid made vmmd its leader).
  [ -n "$VMMD_PID" ] || return 0
  ps -e -o pid=,sid= | awk -v s="$VMMD_PID" '$2 == s && $1 != s { print $1 }'
}

cleanup() {
  local rc=$?
  if [ -n "$VMMD_PID" ] && kill -0 "$VMMD_PID" 2>/dev/null; then
    kill -TERM "$VMMD_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$VMMD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$VMMD_PID" 2>/dev/null || true
  fi
  for p in $(leftovers); do kill -KILL "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ -f "$T/vmmd.log" ]; then
    echo "--- vmmd log"; cat "$T/vmmd.log"
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
q() { timeout 20 "$BIN/vmmctl" -s "$SOCK" --timeout 10 "$@"; }
poll_until() {
  local tries=$1 what=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for: $what"
}

command -v qemu-img >/dev/null || { echo "SKIP: qemu-img missing"; exit 77; }
qemu-img create -q -f raw "$T/base.raw" 4M
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2" 4M
qemu-img create -q -f raw "$T/data.raw" 2M
qemu-img create -q -f raw "$T/scratch.raw" 1M

start_vmmd() {
  setsid "$BIN/vmmd" -sandbox on -qmp "unix:$SOCK,server=on,wait=off" \
    -drive "file=$T/top.qcow2,if=virtio,serial=OLD1" \
    -drive "file=$T/scratch.raw,format=raw,if=virtio,snapshot=on" \
    -blockdev "driver=raw,node-name=n0,file.driver=file,file.filename=$T/data.raw" \
    -device virtio-blk-device,drive=n0,id=disk2,serial=NEW2 \
    >"$T/vmmd.log" 2>&1 &
  VMMD_PID=$!
}

all_connected() {
  [ "$(q query-block | jq '[.[] | select(."x-nbd-connected" == true)] | length')" = 3 ]
}
helper_pid() { q query-helpers | jq -r ".[] | select(.helper==\"$1\") | .pid"; }

check_query_block() {
  local qb; qb=$(q query-block)
  echo "$qb" | jq -e '.[0] | .device == "virtio0" and .qdev == "/machine/peripheral-anon/device[0]"
      and .removable == false and ."io-status" == "ok" and .inserted.drv == "qcow2"
      and .inserted.backing_file_depth == 1 and .inserted.backing_file == "base.raw"
      and .inserted.ro == false and .inserted.image."virtual-size" == 4194304
      and .inserted.cache.writeback == true' >/dev/null || fail "query-block virtio0: $(echo "$qb" | jq -c '.[0]')"
  echo "$qb" | jq -e '.[1] | .device == "virtio1" and .inserted.drv == "raw"
      and .inserted.image."virtual-size" == 1048576' >/dev/null || fail "query-block virtio1: $(echo "$qb" | jq -c '.[1]')"
  echo "$qb" | jq -e '.[2] | .device == "" and .qdev == "/machine/peripheral/disk2"
      and .inserted."node-name" == "n0" and .inserted.drv == "raw"
      and .inserted.image."virtual-size" == 2097152' >/dev/null || fail "query-block n0: $(echo "$qb" | jq -c '.[2]')"
}

case_serve() {
  start_vmmd
  poll_until 200 "every drive connected" all_connected
  check_query_block
  grep -q "drive 'virtio0': vcpu-worker completed the NBD handshake with blockd (4194304 bytes)" "$T/vmmd.log" \
    || fail "no handshake line in vmmd's log"
  grep -q "'-drive serial=...' is deprecated, use '-device virtio-blk-device,serial=...' instead" "$T/vmmd.log" \
    || fail "no deprecation warning for -drive serial="
  local bpid; bpid=$(helper_pid blockd)
  # blockd holds the images vmmd opened (by fd), and its filter lets it open none.
  ls -l "/proc/$bpid/fd" | grep -q "$T/top.qcow2" || fail "blockd does not hold top.qcow2"
  ls -l "/proc/$bpid/fd" | grep -q "$T/base.raw" || fail "blockd does not hold the backing file"
  ls -l "/proc/$bpid/fd" | grep -q "(deleted)" || fail "blockd holds no snapshot overlay"
  [ "$(awk '$1=="Seccomp:" {print $2}' "/proc/$bpid/status")" = 2 ] || fail "blockd is not filtered"
  # The allowlist blockd runs under: no call that names a path.
  local allow; allow=$("$BIN/blockd" --dump-seccomp --sandbox on | grep -v '^never allowed:' | tr ' ' '\n')
  echo "$allow" | grep -qx 'pwrite64' || fail "blockd --dump-seccomp lists no pwrite64"
  for call in open openat openat2 unlink unlinkat mkdir rename; do
    ! echo "$allow" | grep -qx "$call" || fail "blockd's allowlist has $call"
  done
  # snapshot=on leaves the image alone; the base is opened read-only.
  ls -l "/proc/$bpid/fd" | grep -q "$T/scratch.raw" || fail "blockd does not hold scratch.raw"
  q quit >/dev/null
  poll_until 100 "vmmd to exit" bash -c "! kill -0 $VMMD_PID"
  wait "$VMMD_PID" || fail "vmmd exited with $?"
  [ -z "$(leftovers)" ] || fail "processes left: $(leftovers)"
  VMMD_PID=
}

case_restart() {
  start_vmmd
  poll_until 200 "every drive connected" all_connected
  local old; old=$(helper_pid blockd)
  kill -KILL "$old"
  poll_until 200 "blockd restarted" bash -c "[ \"\$(timeout 20 '$BIN/vmmctl' -s '$SOCK' query-helpers | jq -r '.[] | select(.helper==\"blockd\") | .pid')\" != $old ]"
  poll_until 200 "vcpu-worker reconnected" grep -q "drive 'n0': vcpu-worker reconnected to the restarted blockd" "$T/vmmd.log"
  poll_until 100 "every drive connected again" all_connected
  check_query_block
  grep -q "drive 'virtio0': reconnected to blockd" "$T/vmmd.log" || fail "vcpu-worker did not reconnect"
  kill -0 "$VMMD_PID" || fail "vmmd died"
  q quit >/dev/null
  poll_until 100 "vmmd to exit" bash -c "! kill -0 $VMMD_PID"
  wait "$VMMD_PID" || fail "vmmd exited with $?"
  VMMD_PID=
}

expect_exit_1() {
  local msg=$1; shift
  local rc=0
  setsid "$BIN/vmmd" -sandbox on -qmp "unix:$SOCK,server=on,wait=off" "$@" >"$T/vmmd.log" 2>&1 &
  VMMD_PID=$!
  poll_until 200 "vmmd to exit" bash -c "! kill -0 $VMMD_PID"
  wait "$VMMD_PID" || rc=$?
  [ "$rc" = 1 ] || fail "vmmd $*: exit $rc, expected 1"
  grep -qF -- "$msg" "$T/vmmd.log" || fail "vmmd $*: no '$msg' in its output"
  [ -z "$(leftovers)" ] || fail "processes left: $(leftovers)"
  [ ! -e "$SOCK" ] || fail "QMP socket left behind"
  VMMD_PID=
}

case_bad_drive() {
  expect_exit_1 "-drive file=$T/top.qcow2,cache=bogus: invalid cache option" -drive "file=$T/top.qcow2,cache=bogus"
  expect_exit_1 "Property 'virtio-blk-device.drive' can't find value 'nope'" -device virtio-blk-device,drive=nope
  expect_exit_1 "no PCI bus" -drive "file=$T/top.qcow2,if=virtio,addr=5"
  # Found only when vmmd opens the image, after the helpers started.
  expect_exit_1 "-drive file=$T/missing.raw,format=raw,if=virtio: Could not open '$T/missing.raw': No such file or directory" \
    -drive "file=$T/missing.raw,format=raw,if=virtio"
  # blockd's own check of the format options.
  expect_exit_1 "Block format 'raw' does not support the option 'bogus-key'" \
    -drive "file=$T/data.raw,format=raw,if=virtio,bogus-key=1"
}

case $CASE in
  serve) case_serve ;;
  restart) case_restart ;;
  bad-drive) case_bad_drive ;;
  *) fail "unknown case $CASE" ;;
esac
echo "PASS: drives $CASE"
