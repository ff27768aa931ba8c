#!/usr/bin/env bash
# The first end-to-end guest through the process split: vmmd hands /dev/kvm,
# a RAM memfd and a tiny PVH kernel (make-tiny-pvh) to vcpu-worker, whose
# guest prints a marker on COM1. One case per run:
#   poweroff  the guest then powers off through ACPI S5: vmmd must exit 0 by
#             itself within 20 s
#   quit      the guest halts forever: a QMP quit must stop its vCPU and vmmd
#             must exit 0
# Either way vmmd must show the marker and leave no process behind.
# Exits 77 (skip) when this host's /dev/kvm cannot create a VM.
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
MAKE_TINY=${MAKE_TINY_PVH:?MAKE_TINY_PVH must name the make-tiny-pvh program}
CASE=${1:-poweroff}
T=$(mktemp -d /tmp/vmm-tiny.XXXXXX)
VMMD_PID=

leftovers() {
  # Processes still in vmmd's session (setsid made vmmd its leader).
  [ -n "$VMMD_PID" ] || return 0
  ps -e -o pid=,sid= | awk -v s="$VMMD_PID" '$2 == s { print $1 }'
}

cleanup() {
  local rc=$?
  if [ -n "$VMMD_PID" ] && kill -0 "$VMMD_PID" 2>/dev/null; then
    kill -KILL "$VMMD_PID" 2>/dev/null || true
  fi
  for p in $(leftovers); do kill -KILL "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$T/vmmd.log" ]; then
    echo "--- vmmd output"; cat "$T/vmmd.log"
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }

[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is not usable by $(id -un)"
case $CASE in
  poweroff) "$MAKE_TINY" "$T/tiny.elf" || fail "make-tiny-pvh failed" ;;
  quit) "$MAKE_TINY" --no-poweroff "$T/tiny.elf" || fail "make-tiny-pvh failed" ;;
  *) fail "unknown case $CASE" ;;
esac

# setsid: vmmd leads its own session, so its helpers can be found after it.
setsid "$BIN/vmmd" -sandbox on -kernel "$T/tiny.elf" -m 16M \
  -qmp "unix:$T/qmp.sock,server=on,wait=off" >"$T/vmmd.log" 2>&1 &
VMMD_PID=$!

# The guest's console without vmmd's and the helpers' log lines: COM1 bytes go
# out one by one, so a whole log line can land in the middle of the marker.
console() {
  perl -0pe 's/(?:vmmd|vcpu-worker|blockd|fsd|netfilterd|spawner)\[\d+\]: [^\n]*\n//g' "$T/vmmd.log"
}
has_marker() { console | grep -c '^VMM-TINY-OK$' >/dev/null; }

kvm_skip_check() {
  if grep -q "KVM setup failed\|KVM VM:" "$T/vmmd.log" && ! has_marker; then
    skip "this host's /dev/kvm cannot create or run a VM: $(grep -m1 'KVM' "$T/vmmd.log")"
  fi
}

if [ "$CASE" = quit ]; then
  for _ in $(seq 200); do
    has_marker && break
    kill -0 "$VMMD_PID" 2>/dev/null || break
    sleep 0.1
  done
  kvm_skip_check
  has_marker || fail "the guest's marker did not appear within 20 s"
  kill -0 "$VMMD_PID" 2>/dev/null || fail "vmmd exited while the guest was halted"
  timeout 20 "$BIN/vmmctl" -s "$T/qmp.sock" --timeout 10 quit >/dev/null || fail "QMP quit failed"
fi

rc=
for _ in $(seq 200); do
  if ! kill -0 "$VMMD_PID" 2>/dev/null; then
    set +e; wait "$VMMD_PID"; rc=$?; set -e
    break
  fi
  sleep 0.1
done
[ -n "$rc" ] || fail "vmmd did not exit within 20 s"

kvm_skip_check
has_marker || fail "the guest's marker VMM-TINY-OK is not in vmmd's output"
[ "$rc" -eq 0 ] || fail "vmmd exited with status $rc, not 0"
if [ "$CASE" = poweroff ]; then
  grep -q "the guest shut down (guest-poweroff)" "$T/vmmd.log" || fail "vmmd did not log the guest's poweroff"
else
  grep -q "shutting down (host-qmp-quit)" "$T/vmmd.log" || fail "vmmd did not quit on QMP's request"
fi

for _ in $(seq 50); do [ -z "$(leftovers)" ] && break; sleep 0.1; done
[ -z "$(leftovers)" ] || fail "processes left behind: $(leftovers)"
echo "PASS ($CASE): the tiny guest printed its marker; vmmd exited 0, nothing left behind"
