#!/usr/bin/env bash
# COM1 backends and QMP run control with the tiny PVH guest (make-tiny-pvh) on
# this host's KVM, which prints VMM-TINY-OK on COM1. One case per run:
#   stdio    no -serial: the marker on vmmd's stdout, not on its stderr
#   file     -serial file:PATH: the marker in the file only
#   null     -serial null: the marker nowhere, the guest still powers off
#   socket   -chardev socket,server=on (wait=on) + -serial chardev:: the guest
#            starts only when our client connects, which gets the marker; the
#            socket file is removed at exit
#   control  -S: "prelaunch" and no marker until cont (RESUME); stop (STOP,
#            paused, HMP info status), cont; system_reset (RESET) boots the
#            guest again (a second marker); query-cpus-fast with -smp 2
#   reboot   a guest that asks for a reset (i8042) boots again; with
#            -no-reboot vmmd exits 0 instead
#   reboot-devices  the same guest with a virtio disk (served by blockd), a
#            virtio-rng and a virtio-9p share: each reset keeps them (the
#            helpers stay the same processes) and the guest boots again
#   noshutdown  -no-shutdown: the guest's poweroff leaves vmmd in "shutdown";
#            cont is refused, system_reset boots the guest again
# Exits 77 (skip) when this host's /dev/kvm cannot create a VM.
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
MAKE_TINY=${MAKE_TINY_PVH:?MAKE_TINY_PVH must name the make-tiny-pvh program}
CASE=${1:?case}
T=$(mktemp -d /tmp/vmm-ctl.XXXXXX)
PID= CLIENT=

cleanup() {
  local rc=$?
  for p in $PID $CLIENT; do kill -KILL "$p" 2>/dev/null || true; done
  if [ -n "$PID" ]; then
    for p in $(ps -e -o pid=,sid= | awk -v s="$PID" '$2 == s { print $1 }'); do
      kill -KILL "$p" 2>/dev/null || true
    done
  fi
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    echo "--- stdout"; cat "$T/stdout" 2>/dev/null || true
    echo "--- stderr"; cat "$T/stderr" 2>/dev/null || true
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT
fail() { echo "FAIL: $CASE: $*" >&2; exit 1; }
skip() { echo "SKIP: $*"; exit 77; }
[ -r /dev/kvm ] && [ -w /dev/kvm ] || skip "/dev/kvm is not usable by $(id -un)"

Q() { "$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 10 "$@"; }
# As QEMU's monitor: commands a client sends together run one at a time and
# answer in order (stop, cont, query-status says running).
pipelined_stop_cont() {
  python3 - "$T/qmp.sock" <<'EOF'
import json, socket, sys

def client():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sys.argv[1])
    f = s.makefile("rb")
    json.loads(f.readline())
    s.sendall(b'{"execute": "qmp_capabilities"}\n')
    assert "return" in json.loads(f.readline())
    return s, f

def send(s, *cmds):
    s.sendall(b"".join(json.dumps({"execute": c, "id": i}).encode() + b"\n" for c, i in cmds))

def replies(f, n):
    out, events = [], []
    while len(out) < n:
        m = json.loads(f.readline())
        (events.append(m["event"]) if "event" in m else out.append(m))
    return out, events

a, fa = client()
send(a, ("stop", 1), ("cont", 2), ("query-status", 3))
out, events = replies(fa, 3)
assert [m["id"] for m in out] == [1, 2, 3], out
assert out[2]["return"]["status"] == "running", out
assert events[:2] == ["STOP", "RESUME"], events
EOF
}
markers() { [ -f "$1" ] && awk '/VMM-TINY-OK/ { n++ } END { print n + 0 }' "$1" || echo 0; }
wait_for() { # CONDITION-COMMAND... within 20 s
  for _ in $(seq 200); do "$@" && return 0; sleep 0.1; done
  return 1
}
running() { kill -0 "$PID" 2>/dev/null; }
at_least() { [ "$(markers "$1")" -ge "$2" ]; }

start() { # KERNEL-OPTIONS -- VMMD-ARGS...
  local tiny=()
  while [ "$1" != -- ]; do tiny+=("$1"); shift; done
  shift
  "$MAKE_TINY" "${tiny[@]}" "$T/tiny.elf" || fail "make-tiny-pvh failed"
  setsid "$BIN/vmmd" -sandbox on -kernel "$T/tiny.elf" -m 16M \
    -qmp "unix:$T/qmp.sock,server=on,wait=off" "$@" </dev/null >"$T/stdout" 2>"$T/stderr" &
  PID=$!
}

# vmmd's status once it ends by itself within 20 s.
wait_end() {
  wait_for bash -c "! kill -0 $PID 2>/dev/null" || fail "vmmd still runs after 20 s"
  RC=0
  wait "$PID" || RC=$?
  PID=
  if grep -q "KVM VM:\|KVM setup failed" "$T/stderr" && ! at_least "$T/stdout" 1; then
    skip "this host's /dev/kvm cannot run a VM"
  fi
}

case $CASE in
stdio)
  start -- 
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC"
  at_least "$T/stdout" 1 || fail "no marker on stdout"
  [ "$(markers "$T/stderr")" -eq 0 ] || fail "the console went to stderr"
  ;;
file)
  echo old-content >"$T/console"
  start -- -serial "file:$T/console"
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC"
  grep -q '^VMM-TINY-OK' "$T/console" || fail "no marker in the file"
  grep -q old-content "$T/console" && fail "the file was not truncated"
  [ "$(markers "$T/stdout")" -eq 0 ] || fail "the console also went to stdout"
  ;;
null)
  start -- -serial null
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC"
  [ "$(markers "$T/stdout")$(markers "$T/stderr")" = 00 ] || fail "output with -serial null"
  grep -q "guest-poweroff" "$T/stderr" || fail "the guest did not run"
  ;;
socket)
  command -v socat >/dev/null || skip "socat is not installed"
  start -- -chardev "socket,id=s0,path=$T/con.sock,server=on" -serial chardev:s0
  wait_for test -S "$T/con.sock" || fail "no socket"
  sleep 1
  running || fail "vmmd did not wait for the client"
  grep -q "guest started" "$T/stderr" && fail "the guest started before the client"
  socat -u "UNIX-CONNECT:$T/con.sock" "OPEN:$T/console,creat" &
  CLIENT=$!
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC"
  wait_for at_least "$T/console" 1 || fail "the client got no marker"
  [ ! -e "$T/con.sock" ] || fail "the socket file is left"
  ;;
control)
  start --no-poweroff -- -S -smp 2 -serial "file:$T/console"
  wait_for test -S "$T/qmp.sock" || fail "no QMP socket"
  wait_for bash -c "grep -q 'guest started' '$T/stderr'" || fail "the guest was not built"
  Q query-status | grep -q '"status":"prelaunch"' || fail "-S: $(Q query-status)"
  sleep 0.5
  [ "$(markers "$T/console")" -eq 0 ] || fail "-S: the guest ran"
  Q --wait-event RESUME cont >/dev/null || fail "cont: no RESUME"
  wait_for at_least "$T/console" 1 || fail "no marker after cont"
  Q query-status | grep -q '"status":"running"' || fail "not running after cont"
  [ "$(Q query-cpus-fast | grep -o '"cpu-index"' | wc -l)" -eq 2 ] || fail "query-cpus-fast: $(Q query-cpus-fast)"
  Q --wait-event STOP stop >/dev/null || fail "stop: no STOP"
  Q query-status | grep -q '"status":"paused"' || fail "stop: $(Q query-status)"
  Q human-monitor-command command-line="info  status" | grep -q 'VM status: paused' || fail "HMP"
  Q stop >/dev/null || fail "a second stop fails"
  Q --wait-event RESUME cont >/dev/null || fail "cont after stop: no RESUME"
  pipelined_stop_cont || fail "stop and cont sent together"
  Q --wait-event RESET system_reset | grep -q host-qmp-system-reset || fail "system_reset: no RESET"
  wait_for at_least "$T/console" 2 || fail "the guest did not boot again after system_reset"
  Q --wait-event POWERDOWN system_powerdown >/dev/null || fail "system_powerdown: no POWERDOWN"
  Q query-machines | grep -q '"name":"microvm-1.0"' || fail "query-machines: $(Q query-machines)"
  # A VM without disks, shares or netdevs runs vcpu-worker alone.
  roles=$(Q query-helpers | grep -o '"helper":"[a-z-]*"' | tr '\n' ' ')
  [ "$roles" = '"helper":"vcpu-worker" ' ] || fail "helpers of a VM without devices: $roles"
  Q quit >/dev/null || true
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC after quit"
  ;;
reboot)
  start --reboot -- -serial "file:$T/console"
  wait_for at_least "$T/console" 3 || fail "the guest did not boot again after its reset"
  running || fail "vmmd ended on a guest reset"
  kill -TERM "$PID"
  wait_end
  start --reboot -- -no-reboot -serial "file:$T/console2"
  wait_end
  [ "$RC" -eq 0 ] || fail "-no-reboot: vmmd exited $RC"
  [ "$(markers "$T/console2")" -eq 1 ] || fail "-no-reboot: the guest booted again"
  grep -q "shutting down (guest-reset)" "$T/stderr" || fail "-no-reboot: not ended by the guest's reset"
  ;;
reboot-devices)
  qemu-img create -q -f qcow2 "$T/disk.qcow2" 16M
  mkdir "$T/share"
  start --reboot -- -serial "file:$T/console" -drive "file=$T/disk.qcow2,if=virtio" \
    -object rng-random,id=r0,filename=/dev/urandom -device virtio-rng-device,rng=r0 \
    -virtfs "local,path=$T/share,mount_tag=share,security_model=mapped-xattr"
  wait_for at_least "$T/console" 3 || fail "the guest did not boot again after its resets"
  running || fail "vmmd ended on a guest reset with virtio devices"
  grep -q "cannot reset" "$T/stderr" && fail "a reset failed"
  [ "$(grep -c "helper blockd (pid" "$T/stderr")" -eq 1 ] || fail "blockd was started again"
  kill -TERM "$PID"
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC after SIGTERM"
  qemu-img check -q "$T/disk.qcow2" || fail "the image is not clean"
  [ -n "${VMM_TEST_VERBOSE:-}" ] && cat "$T/stderr"
  ;;
noshutdown)
  start -- -no-shutdown -serial "file:$T/console"
  wait_for test -S "$T/qmp.sock" || fail "no QMP socket"
  wait_for at_least "$T/console" 1 || fail "no marker"
  wait_for bash -c "grep -q 'guest-poweroff' '$T/stderr'" || fail "the guest did not power off"
  running || fail "-no-shutdown: vmmd ended with the guest"
  Q query-status | grep -q '"status":"shutdown"' || fail "-no-shutdown: $(Q query-status)"
  out=$(Q cont 2>&1) && fail "cont after the guest's end succeeded"
  case $out in *"Resetting the Virtual Machine is required"*) ;; *) fail "cont after the end: $out" ;; esac
  Q --wait-event RESET system_reset >/dev/null || fail "system_reset: no RESET"
  wait_for at_least "$T/console" 2 || fail "system_reset did not boot the guest again"
  Q quit >/dev/null || true
  wait_end
  [ "$RC" -eq 0 ] || fail "vmmd exited $RC after quit"
  ;;
*) fail "unknown case" ;;
esac
echo "ok: $CASE"
