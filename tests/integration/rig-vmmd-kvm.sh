#!/usr/bin/env bash
# In the rig's L1 (a real /dev/kvm): vmmd opens /dev/kvm, passes the fd to its
# sandboxed vcpu-worker, which creates a VM; QMP query-kvm shows it.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
T=$(mktemp -d /tmp/rig-vmmd.XXXXXX)
SOCK=$T/qmp.sock
PID=
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID"; fi
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/log" ] && cat "$T/log" >&2; exit 1; }

[ -c /dev/kvm ] || fail "no /dev/kvm here (RIG_MODE=${RIG_MODE:-?})"
"$BIN/vmmd" -sandbox on -qmp "unix:$SOCK,server=on,wait=off" 2>"$T/log" &
PID=$!
end=$((SECONDS + 30)); while [ "$SECONDS" -lt "$end" ]; do
  [ "$("$BIN/vmmctl" -s "$SOCK" query-status 2>/dev/null | jq -r .status 2>/dev/null)" = running ] && break
  sleep 0.1
done
kvm=$("$BIN/vmmctl" -s "$SOCK" --timeout 20 query-kvm) || fail "query-kvm failed"
echo "query-kvm: $kvm"
echo "$kvm" | jq -e '.enabled == true and .present == true and ."api-version" == 12 and .vm == true' >/dev/null \
  || fail "KVM not enabled in vcpu-worker"
echo "$kvm" | jq -e '.capabilities | (.irqchip > 0 and .irqfd > 0 and .ioeventfd > 0 and ."user-memory" > 0)' >/dev/null \
  || fail "capabilities missing"
worker=$("$BIN/vmmctl" -s "$SOCK" query-helpers | jq -r '.[] | select(.helper=="vcpu-worker") | .pid')
# The worker holds /dev/kvm and a kvm-vm fd, by inheritance from vmmd's fd, not by opening it.
ls -l "/proc/$worker/fd" | grep -q '/dev/kvm' || fail "vcpu-worker has no /dev/kvm fd"
ls -l "/proc/$worker/fd" | grep -q 'kvm-vm' || fail "vcpu-worker has no VM fd"
grep -q '^Seccomp:.*2' "/proc/$worker/status" || fail "vcpu-worker not sandboxed"
"$BIN/vmmctl" -s "$SOCK" quit >/dev/null
wait "$PID" || fail "vmmd exited non-zero"
PID=
echo "PASS: vmmd passed /dev/kvm to vcpu-worker, which created a VM"
