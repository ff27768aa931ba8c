#!/usr/bin/env bash
# In the rig's L1: QMP control of a guest vmmd boots (Debian's kernel, the
# kit's L2 initramfs waiting for the ACPI power button):
#   -S starts in "prelaunch" with nothing on the console; cont (RESUME) runs it;
#   COM1 goes to a Unix socket (-chardev socket,server=on,wait=on + -serial
#   chardev:), so the guest starts only once our client is connected;
#   query-cpus-fast lists 2 vCPU threads; stop (STOP, "paused", HMP info
#   status) and cont (RESUME); system_reset (RESET) boots the guest again;
#   system_powerdown (POWERDOWN) makes the guest's acpid power off: SHUTDOWN,
#   vmmd exits 0 and removes its sockets.
# Then -no-reboot: a guest reboot ends vmmd with SHUTDOWN reason guest-reset.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
command -v socat >/dev/null || { echo "SKIP: socat is not installed"; exit 77; }
T=$(mktemp -d /tmp/rig-qmp.XXXXXX)
PID= CON= EV=
cleanup() {
  for p in $PID $CON $EV; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  echo "--- vmmd:" >&2; tr -d '\r' <"$T/out" | tail -30 >&2
  echo "--- console:" >&2; tr -d '\r' <"$T/console" 2>/dev/null | tail -30 >&2
  grep -a -m1 "guest triple fault" "$T/out" >&2 || true
  exit 1
}
Q() { "$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 60 "$@"; }
# No pipes into grep -q (pipefail and SIGPIPE) and no <(...) (L1 has no /dev/fd).
clean() { tr -d '\r' <"$1" >"$1.clean" 2>/dev/null || : >"$1.clean"; echo "$1.clean"; }
count() { grep -c -- "$1" "$(clean "$T/console")" || true; }
has() { grep -q -- "$2" "$(clean "$1")"; }
wait_console() { # TEXT N SECONDS: TEXT at least N times on the console
  local end=$((SECONDS + $3)); while [ "$SECONDS" -lt "$end" ]; do
    [ "$(count "$1")" -ge "$2" ] && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
wait_file() { local end=$((SECONDS + $2)); while [ "$SECONDS" -lt "$end" ]; do [ -e "$1" ] && return 0; sleep 0.1; done; return 1; }
wait_exit() {
  end=$((SECONDS + 300)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$1: vmmd still running after 300 s"
  RC=0
  wait "$PID" || RC=$?
  PID=
}

: >"$T/console"
setsid "$BIN/vmmd" -sandbox on,spawn=deny -S -smp 2 -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" \
    -m 256M -append "console=ttyS0 panic=-1 quiet vmm_l2=wait-powerdown" \
    -chardev "socket,id=con0,path=$T/serial.sock,server=on,wait=on" -serial chardev:con0 \
    -qmp "unix:$T/qmp.sock,server=on,wait=off" </dev/null >"$T/out" 2>&1 &
PID=$!
wait_file "$T/qmp.sock" 60 || fail "no QMP socket"
wait_file "$T/serial.sock" 60 || fail "no serial socket"
Q query-status | grep -q '"status":"prelaunch"' || fail "-S: status is not prelaunch: $(Q query-status)"
socat -u "UNIX-CONNECT:$T/serial.sock" "OPEN:$T/console,append" &
CON=$!
sleep 3
[ "$(count VMM-L2-MARKER)" -eq 0 ] || fail "-S: the guest ran before cont"
Q --wait-event RESUME cont >/dev/null || fail "cont: no RESUME"
wait_console VMM-L2-WAITING 1 300 || fail "no marker from the guest"
has "$T/console" "VMM-L2-CPUS 2" || fail "the guest does not see 2 CPUs"
Q query-status | grep -q '"status":"running"' || fail "cont: not running"
cpus=$(Q query-cpus-fast)
[ "$(echo "$cpus" | grep -o '"cpu-index"' | wc -l)" -eq 2 ] || fail "query-cpus-fast: $cpus"
[ "$(echo "$cpus" | grep -o '"thread-id":[1-9]' | wc -l)" -eq 2 ] || fail "query-cpus-fast: no thread ids: $cpus"
echo "prelaunch, cont, serial socket, 2 vCPUs: ok ($cpus)"

Q --wait-event STOP stop >/dev/null || fail "stop: no STOP"
Q query-status | grep -q '"status":"paused"' || fail "stop: not paused"
Q human-monitor-command command-line="info status" | grep -q 'VM status: paused' ||
  fail "HMP info status: $(Q human-monitor-command command-line="info status")"
Q --wait-event RESUME cont >/dev/null || fail "cont after stop: no RESUME"
Q human-monitor-command command-line="info status" | grep -q 'VM status: running' || fail "HMP: not running"
echo "stop/cont: ok"

Q --wait-event RESET system_reset | grep -q '"reason":"host-qmp-system-reset"' || fail "system_reset: no RESET"
wait_console VMM-L2-WAITING 2 300 || fail "system_reset: the guest did not boot again"
echo "system_reset: ok"

"$BIN/vmmctl" -s "$T/qmp.sock" --raw -t 300 --wait-event SHUTDOWN >"$T/shutdown" 2>&1 &
EV=$!
sleep 1
Q --wait-event POWERDOWN system_powerdown >/dev/null || fail "system_powerdown: no POWERDOWN"
wait_exit "system_powerdown"
wait "$EV" || true
EV=
[ "$RC" -eq 0 ] || fail "system_powerdown: vmmd exited $RC"
has "$T/console" VMM-L2-POWERDOWN || fail "system_powerdown: the guest's acpid did not act"
grep -q '"reason":"guest-shutdown"' "$T/shutdown" || fail "no SHUTDOWN guest-shutdown: $(cat "$T/shutdown")"
[ ! -e "$T/qmp.sock" ] && [ ! -e "$T/serial.sock" ] || fail "sockets left behind"
echo "system_powerdown: ok"

# -no-reboot: the guest's reboot (ACPI reset register) ends vmmd, status 0.
: >"$T/console"
setsid "$BIN/vmmd" -sandbox on,spawn=deny -no-reboot -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" \
    -m 256M -append 'console=ttyS0 panic=-1 quiet vmm_l2_cmd="/bin/busybox reboot -f"' \
    -serial "file:$T/console" </dev/null >"$T/out" 2>&1 &
PID=$!
wait_exit "-no-reboot"
[ "$RC" -eq 0 ] || fail "-no-reboot: vmmd exited $RC"
grep -q "shutting down (guest-reset)" "$T/out" || fail "-no-reboot: not ended by the guest's reset"
echo "-no-reboot: ok"
