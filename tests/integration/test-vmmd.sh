#!/usr/bin/env bash
# vmmd with all its helpers, driven over QMP by vmmctl. One case per run:
#   test-vmmd.sh lifecycle|restart|seccomp-kill|spawn-deny|daemonize|readconfig|bad-options|no-leftovers
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
T=$(mktemp -d /tmp/vmmd-test.XXXXXX)
SOCK=$T/qmp.sock
VMMD_PID=
HELPER_PIDS=()

cleanup() {
  local rc=$?
  # Only what this test started: vmmd, and the helpers it reported.
  if [ -n "$VMMD_PID" ] && kill -0 "$VMMD_PID" 2>/dev/null; then
    kill -TERM "$VMMD_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$VMMD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$VMMD_PID" 2>/dev/null || true
  fi
  for p in "${HELPER_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ $rc -ne 0 ] && [ -f "$T/vmmd.log" ]; then
    echo "--- vmmd log"; cat "$T/vmmd.log"
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
q() { timeout 20 "$BIN/vmmctl" -s "$SOCK" --timeout 10 "$@"; }

# poll_until TENTHS DESCRIPTION COMMAND...: runs COMMAND every 0.1 s until it
# succeeds, at most TENTHS times.
poll_until() {
  local tries=$1 what=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for: $what"
}
wait_until() { poll_until 200 "$@"; }
wait_until_long() { poll_until 300 "$@"; }

status_is() { [ "$(q query-status | jq -r .status)" = "$1" ]; }

start_vmmd() {
  "$BIN/vmmd" -qmp "unix:$SOCK,server=on,wait=off" "$@" 2>"$T/vmmd.log" &
  VMMD_PID=$!
  wait_until "vmmd running" status_is running
  mapfile -t HELPER_PIDS < <(q query-helpers | jq -r '.[].pid')
}

# jq -e succeeds on empty input, so states are compared as strings.
helper_state_is() { [ "$(q query-helpers 2>/dev/null | jq -r ".[] | select(.helper==\"$1\") | .state")" = "$2" ]; }
helper_pid() { q query-helpers | jq -r ".[] | select(.helper==\"$1\") | .pid"; }
proc_field() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }

wait_exit() {
  local pid=$1
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  fail "process $pid did not exit"
}

quit_and_check_clean() {
  q quit >/dev/null
  local rc=0
  for _ in $(seq 100); do kill -0 "$VMMD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$VMMD_PID" 2>/dev/null && fail "vmmd still running after quit"
  wait "$VMMD_PID" || rc=$?
  [ "$rc" -eq 0 ] || fail "vmmd exited with $rc after quit"
  VMMD_PID=
  for p in "${HELPER_PIDS[@]}"; do
    wait_exit "$p"
  done
  [ ! -e "$SOCK" ] || fail "QMP socket left behind"
}

case_lifecycle() {
  start_vmmd -sandbox on -name guest=demo
  [ "$(q query-name | jq -r .name)" = demo ] || fail "query-name"
  q query-version | jq -e '.qemu.major >= 0 and (.package | startswith("vmmd"))' >/dev/null || fail "query-version"
  q query-commands | jq -e 'map(.name) | index("quit") and index("query-status")' >/dev/null || fail "query-commands"
  local helpers
  helpers=$(q query-helpers)
  [ "$(echo "$helpers" | jq length)" -eq 4 ] || fail "expected 4 helpers: $helpers"
  echo "$helpers" | jq -e 'all(.state == "running" and .sandbox.seccomp == 2 and .sandbox.no_new_privs == true)' >/dev/null \
    || fail "helpers not all sandboxed: $helpers"
  # The kernel agrees: seccomp mode 2 and no_new_privs for vmmd and each helper,
  # and the helpers hold no capabilities.
  [ "$(proc_field "$VMMD_PID" Seccomp)" = 2 ] || fail "vmmd is not in seccomp mode 2"
  for p in "${HELPER_PIDS[@]}"; do
    [ "$(proc_field "$p" Seccomp)" = 2 ] || fail "helper $p is not in seccomp mode 2"
    [ "$(proc_field "$p" NoNewPrivs)" = 1 ] || fail "helper $p lacks no_new_privs"
    [ "$(proc_field "$p" CapEff)" = 0000000000000000 ] || fail "helper $p has capabilities"
    [ "$(awk '{print $4}' "/proc/$p/stat")" = "$VMMD_PID" ] || fail "helper $p is not vmmd's child"
  done
  # Each helper holds only its control socket beyond stdio.
  for p in "${HELPER_PIDS[@]}"; do
    local n
    n=$(ls "/proc/$p/fd" | awk '$1 > 2' | while read -r fd; do readlink "/proc/$p/fd/$fd"; done | grep -c '^socket:' || true)
    [ "$n" -ge 1 ] || fail "helper $p has no control socket"
  done
  # QMP protocol errors leave the session usable.
  printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"no-such"}' '{"bad json' '}' '{"execute":"query-status","id":7}' \
    | timeout 10 socat -t 2 - "UNIX-CONNECT:$SOCK" >"$T/raw.out" 2>/dev/null || true
  grep -q '"CommandNotFound"' "$T/raw.out" || fail "no CommandNotFound for an unknown command"
  grep -q '"id": *7' "$T/raw.out" || fail "no reply with id 7 after bad input"
  local out rc=0
  out=$(q no-such-command 2>&1) || rc=$?
  [ $rc -eq 1 ] && [[ $out == *CommandNotFound* ]] || fail "unknown command: rc=$rc out=$out"
  quit_and_check_clean
}

case_restart() {
  start_vmmd -sandbox on -supervise backoff-ms=50
  local old new
  old=$(helper_pid blockd)
  "$BIN/vmmctl" -s "$SOCK" --timeout 20 --wait-event HELPER_RESTARTED >"$T/event" 2>&1 &
  local waiter=$!
  sleep 0.5
  kill -KILL "$old"
  wait_until "blockd restarted" bash -c "[ \"\$($BIN/vmmctl -s $SOCK query-helpers | jq -r '.[] | select(.helper==\"blockd\") | .state + \" \" + (.restarts|tostring)')\" = 'running 1' ]"
  new=$(helper_pid blockd)
  [ "$new" != "$old" ] && [ "$new" -gt 0 ] || fail "blockd pid did not change ($old -> $new)"
  HELPER_PIDS+=("$new")
  wait "$waiter" || fail "no HELPER_RESTARTED event: $(cat "$T/event")"
  grep -q blockd "$T/event" || fail "event does not name blockd: $(cat "$T/event")"
  [ "$(proc_field "$new" Seccomp)" = 2 ] || fail "restarted blockd is not sandboxed"
  grep -q "blockd (pid $old) killed by signal 9" "$T/vmmd.log" || fail "the crash was not logged"
  quit_and_check_clean
}

case_seccomp_kill() {
  local hd=$T/helpers
  mkdir "$hd"
  for h in vcpu-worker blockd fsd; do ln -s "$BIN/$h" "$hd/$h"; done
  ln -s "${BAD_HELPER:?}" "$hd/netfilterd"
  "$BIN/vmmd" -qmp "unix:$SOCK,server=on,wait=off" -sandbox on -helper-dir "$hd" \
      -supervise max-restarts=2,backoff-ms=3000 2>"$T/vmmd.log" &
  VMMD_PID=$!
  # The kernel names the call in a rate-limited record (10 per 5 s): three kills
  # spread over 9 s (backoff 3 s, then 6 s) leave at least one outside any burst
  # that other tests caused.
  wait_until_long "netfilterd given up" helper_state_is netfilterd failed
  grep -q "helper netfilterd (pid [0-9]*) was killed by seccomp: forbidden system call ptrace" "$T/vmmd.log" \
    || fail "vmmd did not log the forbidden syscall"
  grep -q "giving up" "$T/vmmd.log" || fail "no give-up message"
  mapfile -t HELPER_PIDS < <(q query-helpers | jq -r '.[] | select(.pid > 0) | .pid')
  quit_and_check_clean
}

case_spawn_deny() {
  start_vmmd -sandbox on,spawn=deny -supervise backoff-ms=50
  local old
  old=$(helper_pid fsd)
  q query-helpers | jq -e 'all(.sandbox.policy | contains("spawn=deny"))' >/dev/null || fail "policy not passed to helpers"
  kill -KILL "$old"
  wait_until "fsd restarted under spawn=deny" bash -c "[ \"\$($BIN/vmmctl -s $SOCK query-helpers | jq -r '.[] | select(.helper==\"fsd\") | .state + \" \" + (.restarts|tostring)')\" = 'running 1' ]"
  HELPER_PIDS+=("$(helper_pid fsd)")
  quit_and_check_clean
}

case_daemonize() {
  local rc=0
  timeout 30 "$BIN/vmmd" -daemonize -pidfile "$T/vmmd.pid" -qmp "unix:$SOCK,server=on,wait=off" \
      -sandbox on 2>"$T/vmmd.log" || rc=$?
  # Known before any check can fail, so that cleanup stops the daemon.
  [ -s "$T/vmmd.pid" ] && VMMD_PID=$(cat "$T/vmmd.pid")
  [ $rc -eq 0 ] || fail "vmmd -daemonize exited $rc"
  kill -0 "$VMMD_PID" || fail "daemon not running"
  status_is running || fail "daemon not running helpers"
  mapfile -t HELPER_PIDS < <(q query-helpers | jq -r '.[].pid')
  # A second vmmd with the same pid file is refused.
  rc=0
  timeout 10 "$BIN/vmmd" -pidfile "$T/vmmd.pid" -helpers blockd 2>"$T/second.log" || rc=$?
  [ $rc -eq 1 ] && grep -q "Cannot lock pid file" "$T/second.log" || fail "second vmmd not refused: $rc $(cat "$T/second.log")"
  q quit >/dev/null
  wait_exit "$VMMD_PID"
  VMMD_PID=
  for p in "${HELPER_PIDS[@]}"; do wait_exit "$p"; done
  [ ! -e "$T/vmmd.pid" ] || fail "pid file left behind"
  [ ! -e "$SOCK" ] || fail "socket left behind"
}

case_readconfig() {
  cat >"$T/vm.conf" <<'CONF'
# a QEMU-style config file
[name]
  guest = "from-config"

[sandbox]
  enable = "on"
  spawn = "deny"

[global]
  driver = "virtio-blk-device"
  property = "num-queues"
  value = "2"
CONF
  start_vmmd -readconfig "$T/vm.conf"
  [ "$(q query-name | jq -r .name)" = from-config ] || fail "name from -readconfig"
  q query-helpers | jq -e 'all(.sandbox.seccomp == 2 and (.sandbox.policy | contains("spawn=deny")))' >/dev/null \
    || fail "sandbox from -readconfig"
  quit_and_check_clean
  printf '[name]\n  guest = "x\n' >"$T/bad.conf"
  local rc=0
  "$BIN/vmmd" -readconfig "$T/bad.conf" 2>"$T/err" || rc=$?
  [ $rc -eq 1 ] && grep -q "bad.conf:2" "$T/err" || fail "bad config: rc=$rc $(cat "$T/err")"
}

expect_error() {
  local pattern=$1; shift
  local rc=0
  timeout 10 "$BIN/vmmd" "$@" >"$T/out" 2>&1 || rc=$?
  [ $rc -eq 1 ] || fail "vmmd $* exited $rc, expected 1"
  grep -q -- "$pattern" "$T/out" || fail "vmmd $*: expected '$pattern', got: $(cat "$T/out")"
}

case_bad_options() {
  expect_error "invalid argument for spawn" -sandbox on,spawn=maybe
  expect_error "invalid argument for elevateprivileges" -sandbox on,elevateprivileges=sometimes
  expect_error "no-such-option" -no-such-option
  expect_error "requires an argument" -name
  expect_error "unknown key 'colour'" -name guest=x,colour=blue
  expect_error "duplicate key 'guest'" -name guest=x,guest=y
  expect_error "only unix:PATH" -qmp tcp:localhost:4444,server=on
  expect_error "unknown helper 'gpu'" -helpers gpu
  expect_error "Cannot open pid file" -pidfile /nonexistent/dir/pid
  expect_error "unsupported machine type 'q35'" -machine q35
  expect_error "Property 'microvm-1.0-machine.foo' not found" -M microvm,foo=on
  expect_error "Parameter 'size' expects a non-negative number" -m lots
  expect_error "Invalid CPU topology" -smp 4,sockets=3
  expect_error "unable to find CPU model 'EPYC'" -cpu EPYC
  expect_error "Duplicate ID 'r'" -object rng-random,id=r -object rng-builtin,id=r
  "$BIN/vmmd" -machine help | grep -q "^microvm-1.0 .*(default)$" || fail "-machine help"
  # help exits 0 and lists keys
  "$BIN/vmmd" -name help | grep -q "debug-threads" || fail "-name help"
  "$BIN/vmmd" -sandbox help | grep -q "resourcecontrol" || fail "-sandbox help"
}

case_no_leftovers() {
  # SIGTERM also stops everything and cleans up.
  start_vmmd -sandbox on
  kill -TERM "$VMMD_PID"
  local rc=0
  wait "$VMMD_PID" || rc=$?
  [ $rc -eq 0 ] || fail "vmmd exited $rc on SIGTERM"
  VMMD_PID=
  for p in "${HELPER_PIDS[@]}"; do wait_exit "$p"; done
  [ ! -e "$SOCK" ] || fail "socket left behind"
  pgrep -P "$$" -f vmmd-spawner >/dev/null && fail "spawner left behind"
  return 0
}

case_systemd() {
  # vmmd under a stand-in for systemd: QMP on the activated socket, READY=1
  # once the helpers are up, WATCHDOG=1 while running, STOPPING=1 at quit.
  "${SD_ACTIVATE:?}" --listen "$SOCK" --notify "$T/notify" --timeout 60 -- \
      "$BIN/vmmd" -sandbox on >"$T/notes" 2>"$T/vmmd.log" &
  local launcher=$!
  wait_until "READY=1" grep -q "READY=1" "$T/notes"
  status_is running || fail "not running after READY=1"
  grep -q "STATUS=running, 4 helpers" "$T/notes" || fail "no STATUS: $(cat "$T/notes")"
  wait_until "WATCHDOG=1" grep -q "WATCHDOG=1" "$T/notes"
  mapfile -t HELPER_PIDS < <(q query-helpers | jq -r '.[].pid')
  q quit >/dev/null
  local rc=0
  wait "$launcher" || rc=$?
  [ $rc -eq 0 ] || fail "vmmd under sd-activate exited $rc"
  grep -q "STOPPING=1" "$T/notes" || fail "no STOPPING=1"
  for p in "${HELPER_PIDS[@]}"; do wait_exit "$p"; done
}

case_dump_seccomp() {
  local out
  out=$("$BIN/vmmd" -sandbox on,spawn=deny -dump-seccomp)
  echo "$out" | grep -q "^process: vmmd" || fail "no vmmd section: $out"
  echo "$out" | grep -q "^process: spawner" || fail "no spawner section"
  # vmmd itself never forks once sandboxed; the spawner keeps spawn even under spawn=deny.
  echo "$out" | awk '/^process: vmmd/{on=1} /^process: spawner/{on=0} on' | grep -qw execve && fail "vmmd may execve"
  echo "$out" | awk '/^process: spawner/{on=1} on' | grep -qw execve || fail "the spawner may not execve"
  "$BIN/blockd" --dump-seccomp --sandbox on,spawn=deny | grep -q "^policy: on,.*spawn=deny" || fail "blockd dump policy"
  "$BIN/blockd" --dump-seccomp --sandbox on,spawn=deny | grep -qw execve && fail "blockd may execve"
  "$BIN/vcpu-worker" --dump-seccomp --sandbox on | grep -qw ioctl || fail "vcpu-worker dump lacks ioctl"
  "$BIN/vcpu-worker" --dump-seccomp --sandbox on | grep -qw openat && fail "vcpu-worker may open files"
  return 0
}

"case_${1//-/_}"
echo "PASS: vmmd $1"
