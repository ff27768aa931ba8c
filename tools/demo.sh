#!/usr/bin/env bash
# The main job, until a guest boots: vmmd starts its helpers, each in its own
# sandbox; we look at them over QMP, crash one to watch it come back, and quit.
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
T=$(mktemp -d /tmp/vmmd-demo.XXXXXX)
SOCK=$T/qmp.sock
VMMD_PID=
cleanup() {
  if [ -n "$VMMD_PID" ] && kill -0 "$VMMD_PID" 2>/dev/null; then kill -TERM "$VMMD_PID"; wait "$VMMD_PID" || true; fi
  rm -rf "$T"
}
trap cleanup EXIT
ctl() { "$BIN/vmmctl" -s "$SOCK" --timeout 10 "$@"; }

echo "== vmmd -name demo -sandbox on,spawn=deny -qmp unix:$SOCK,server=on,wait=off"
"$BIN/vmmd" -name demo -sandbox on,spawn=deny -qmp "unix:$SOCK,server=on,wait=off" &
VMMD_PID=$!
for _ in $(seq 100); do
  [ "$(ctl query-status 2>/dev/null | jq -r .status 2>/dev/null)" = running ] && break
  sleep 0.1
done
echo
echo "== QMP query-helpers: each helper's handshake and sandbox, as it reports it"
ctl query-helpers | jq -r '.[] | "\(.helper)\tpid \(.pid)\t\(.state)\tseccomp=\(.sandbox.seccomp) no_new_privs=\(.sandbox.no_new_privs) cap_eff=\(.sandbox.cap_eff)"'
echo
echo "== the kernel's view (/proc/PID/status)"
for pid in "$VMMD_PID" $(ctl query-helpers | jq -r '.[].pid'); do
  printf '%-12s %s\n' "$(cat /proc/$pid/comm)" "$(grep -E '^(Seccomp|NoNewPrivs):' /proc/$pid/status | tr -s '\t\n' '  ')"
done
echo
echo "== QMP query-kvm (vcpu-worker holds the /dev/kvm fd that vmmd passed it)"
ctl query-kvm | jq -c .
echo
blockd=$(ctl query-helpers | jq -r '.[] | select(.helper=="blockd") | .pid')
echo "== kill -9 blockd (pid $blockd): vmmd restarts it, even under spawn=deny"
kill -KILL "$blockd"
for _ in $(seq 100); do
  [ "$(ctl query-helpers | jq -r '.[] | select(.helper=="blockd") | "\(.state) \(.restarts)"')" = "running 1" ] && break
  sleep 0.1
done
ctl query-helpers | jq -r '.[] | select(.helper=="blockd") | "blockd\tpid \(.pid)\t\(.state)\trestarts=\(.restarts)"'
echo
echo "== QMP quit"
ctl quit >/dev/null
wait "$VMMD_PID"; rc=$?
VMMD_PID=
echo "vmmd exited with status $rc; socket left behind: $([ -e "$SOCK" ] && echo yes || echo no)"
