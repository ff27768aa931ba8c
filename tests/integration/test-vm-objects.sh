#!/usr/bin/env bash
# The VM's -object backends: guest RAM from memory-backend-file /
# memory-backend-memfd, and the entropy sources of virtio-rng, with the
# tiny PVH guest (make-tiny-pvh --no-poweroff: it prints its marker and halts)
# on this host's KVM. One case per run:
#   file-shared   share=on,discard-data=on: vcpu-worker maps the file shared
#                 (rw-s in /proc/PID/maps), query-memdev reports it, and after a
#                 clean quit the file's pages are punched out (0 blocks)
#   file-private  share=off (QEMU's default): mapped private (rw-p); the file's
#                 contents are the same after the guest ran
#   memfd         memory-backend-memfd: mapped shared, query-memdev's id and size
#   mismatch      -m differs from the backend's size: QEMU's error, exit 1
#   bad-path      mem-path in a missing directory: QEMU's error naming it, exit 1
#   rng           two virtio-rng devices (built in, and rng-random on a file):
#                 vcpu-worker holds /dev/urandom and the file, and took them
#                 without an error
#   rng-bad-file  rng-random,filename= missing: QEMU's error naming it, exit 1
# Exits 77 (skip) when this host's /dev/kvm cannot create a VM.
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
MAKE_TINY=${MAKE_TINY_PVH:?MAKE_TINY_PVH must name the make-tiny-pvh program}
CASE=${1:?case}
T=$(mktemp -d /tmp/vmm-objects.XXXXXX)
VMMD_PID=

leftovers() {
  [ -n "$VMMD_PID" ] || return 0
  ps -e -o pid=,sid= | awk -v s="$VMMD_PID" '$2 == s { print $1 }'
}
cleanup() {
  local rc=$?
  if [ -n "$VMMD_PID" ] && kill -0 "$VMMD_PID" 2>/dev/null; then kill -KILL "$VMMD_PID" 2>/dev/null || true; fi
  for p in $(leftovers); do kill -KILL "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$T/vmmd.log" ]; then echo "--- vmmd output"; cat "$T/vmmd.log"; fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is not usable by $(id -un)"
"$MAKE_TINY" --no-poweroff "$T/tiny.elf" || fail "make-tiny-pvh failed"

SIZE=$((16 << 20))
case $CASE in
  file-shared)  MEM=(-object "memory-backend-file,id=m0,size=16M,mem-path=$T/ram,share=on,discard-data=on"
                     -machine memory-backend=m0) ;;
  file-private) head -c $SIZE /dev/urandom >"$T/ram"; cp "$T/ram" "$T/ram.orig"
                MEM=(-object "memory-backend-file,id=m0,size=16M,mem-path=$T/ram" -machine memory-backend=m0) ;;
  memfd)        MEM=(-object "memory-backend-memfd,id=m0,size=16M" -machine memory-backend=m0 -m 16M) ;;
  mismatch)     MEM=(-object "memory-backend-memfd,id=m0,size=32M" -machine memory-backend=m0 -m 16M) ;;
  bad-path)     MEM=(-object "memory-backend-file,id=m0,size=16M,mem-path=$T/missing/ram" -machine memory-backend=m0) ;;
  rng)          head -c 65536 /dev/urandom >"$T/entropy"
                MEM=(-m 16M -device virtio-rng-device -device virtio-rng-device,rng=r1
                     -object "rng-random,id=r1,filename=$T/entropy") ;;
  rng-bad-file) MEM=(-m 16M -object "rng-random,id=r1,filename=$T/missing" -device virtio-rng-device,rng=r1) ;;
  *) fail "unknown case $CASE" ;;
esac

run_vmmd() {
  setsid "$BIN/vmmd" -sandbox on -kernel "$T/tiny.elf" "${MEM[@]}" \
    -qmp "unix:$T/qmp.sock,server=on,wait=off" >"$T/vmmd.log" 2>&1 &
  VMMD_PID=$!
}

if [ "$CASE" = mismatch ] || [ "$CASE" = bad-path ] || [ "$CASE" = rng-bad-file ]; then
  run_vmmd
  rc=
  for _ in $(seq 100); do
    if ! kill -0 "$VMMD_PID" 2>/dev/null; then set +e; wait "$VMMD_PID"; rc=$?; set -e; break; fi
    sleep 0.1
  done
  [ "$rc" = 1 ] || fail "vmmd exit status '$rc', not 1"
  if [ "$CASE" = mismatch ]; then
    grep -q "Machine memory size does not match the size of the memory backend" "$T/vmmd.log" ||
      fail "no size mismatch error"
  elif [ "$CASE" = rng-bad-file ]; then
    grep -q "Could not open '$T/missing': No such file or directory" "$T/vmmd.log" ||
      fail "no error naming the entropy file"
  else
    grep -q "can't open backing store $T/missing/ram for guest RAM: No such file or directory" "$T/vmmd.log" ||
      fail "no backing store error naming the path"
  fi
  [ -z "$(leftovers)" ] || fail "processes left behind: $(leftovers)"
  echo "PASS ($CASE)"
  exit 0
fi

run_vmmd
console() { perl -0pe 's/(?:vmmd|vcpu-worker|blockd|fsd|netfilterd|spawner)\[\d+\]: [^\n]*\n//g' "$T/vmmd.log"; }
for _ in $(seq 200); do
  console | grep -q '^VMM-TINY-OK$' && break
  kill -0 "$VMMD_PID" 2>/dev/null || break
  sleep 0.1
done
if grep -q "KVM setup failed\|KVM VM:" "$T/vmmd.log" && ! console | grep -q '^VMM-TINY-OK$'; then
  skip "this host's /dev/kvm cannot run a VM: $(grep -m1 'KVM' "$T/vmmd.log")"
fi
console | grep -q '^VMM-TINY-OK$' || fail "the guest's marker did not appear"

WORKER=$(pgrep -s "$VMMD_PID" -x vcpu-worker | head -1)
[ -n "$WORKER" ] || fail "no vcpu-worker in vmmd's session"
# The RAM mapping: 16 MiB, shared or private as the backend says.
maps_line() { awk -v want="$1" '$6 ~ want { print $2 }' "/proc/$WORKER/maps" | head -1; }
MEMDEV=$(timeout 20 "$BIN/vmmctl" -s "$T/qmp.sock" -r query-memdev)
case $CASE in
  file-shared)
    [ "$(maps_line "$T/ram")" = rw-s ] || fail "the backing file is not mapped rw-s: $(grep "$T/ram" "/proc/$WORKER/maps")"
    [ "$(echo "$MEMDEV" | jq -c '.[0] | [.id, .size, .share]')" = "[\"m0\",$SIZE,true]" ] || fail "query-memdev: $MEMDEV" ;;
  file-private)
    [ "$(maps_line "$T/ram")" = rw-p ] || fail "the backing file is not mapped rw-p: $(grep "$T/ram" "/proc/$WORKER/maps")"
    [ "$(echo "$MEMDEV" | jq -c '.[0] | [.id, .share]')" = '["m0",false]' ] || fail "query-memdev: $MEMDEV" ;;
  rng)
    fds=$(ls -l "/proc/$WORKER/fd")
    echo "$fds" | grep -q " -> /dev/urandom$" || fail "vcpu-worker does not hold /dev/urandom: $fds"
    echo "$fds" | grep -q " -> $T/entropy$" || fail "vcpu-worker does not hold the rng-random file: $fds"
    ! grep -q "virtio-rng" "$T/vmmd.log" || fail "virtio-rng complained: $(grep virtio-rng "$T/vmmd.log")" ;;
  memfd)
    [ "$(maps_line "memfd:guest-ram")" = rw-s ] || fail "the memfd is not mapped rw-s"
    [ "$(echo "$MEMDEV" | jq -c '.[0] | [.id, .size, .share]')" = "[\"m0\",$SIZE,true]" ] || fail "query-memdev: $MEMDEV" ;;
esac

timeout 20 "$BIN/vmmctl" -s "$T/qmp.sock" --timeout 10 quit >/dev/null || fail "QMP quit failed"
rc=
for _ in $(seq 200); do
  if ! kill -0 "$VMMD_PID" 2>/dev/null; then set +e; wait "$VMMD_PID"; rc=$?; set -e; break; fi
  sleep 0.1
done
[ "$rc" = 0 ] || fail "vmmd exit status '$rc', not 0"
case $CASE in
  file-shared)
    [ -f "$T/ram" ] || fail "the backing file is gone"
    [ "$(stat -c %s "$T/ram")" = $SIZE ] || fail "the backing file's size changed"
    [ "$(stat -c %b "$T/ram")" = 0 ] || fail "discard-data=on: $(stat -c %b "$T/ram") blocks still allocated" ;;
  file-private)
    cmp -s "$T/ram" "$T/ram.orig" || fail "share=off: the guest's writes reached the file" ;;
esac
for _ in $(seq 50); do [ -z "$(leftovers)" ] && break; sleep 0.1; done
[ -z "$(leftovers)" ] || fail "processes left behind: $(leftovers)"
echo "PASS ($CASE)"
