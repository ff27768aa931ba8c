#!/usr/bin/env bash
# The VM's 9p exports through the process split, without a guest (this
# host's KVM cannot boot Linux): vmmd opens the export directory and hands it
# to fsd with one end of a socketpair (fsdev-add), vcpu-worker gets the other
# end (fsdev-attach) and checks it with a Tversion. One case per run:
#   serve        -fsdev/-device and -virtfs: both devices connected (vmmd's
#                log), fsd holds the export directories vmmd opened
#   restart      fsd killed: restarted, the exports served again, vcpu-worker
#                reconnected, vmmd still running
#   external     socket=PATH and sock_fd=N reach an fsd started by hand
#                (fsd --listen), with no fsd helper at all
#   bad-options  QEMU's messages for bad -fsdev/-device/-virtfs, a missing
#                export directory and a socket nobody listens on: exit 1,
#                nothing left running
# serve and restart need fsd's helper mode to answer fsdev-add
# (fsd/helper-exports.c plugged into fsd/main.c); until it does they exit 77.
set -euo pipefail
BIN=${VMM_BIN_DIR:?VMM_BIN_DIR must name the bin directory of the build}
CASE=${1:-serve}
T=$(mktemp -d /tmp/vmm-fsdev.XXXXXX)
SOCK=$T/qmp.sock
VMMD_PID=
FSD_PID=

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
  if [ -n "$FSD_PID" ]; then
    kill -TERM "$FSD_PID" 2>/dev/null || true
    wait "$FSD_PID" 2>/dev/null || true
  fi
  if [ $rc -ne 0 ] && [ $rc -ne 77 ] && [ -f "$T/vmmd.log" ]; then
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
helper_pid() { q query-helpers | jq -r ".[] | select(.helper==\"$1\") | .pid"; }

mkdir -p "$T/share" "$T/other"
echo hello >"$T/share/hello.txt"

start_vmmd() {
  setsid "$BIN/vmmd" -sandbox on -qmp "unix:$SOCK,server=on,wait=off" "$@" >"$T/vmmd.log" 2>&1 &
  VMMD_PID=$!
}

# fsd's helper mode answers fsdev-add, or this case cannot run.
skip_without_helper_mode() {
  if grep -q "the command 'fsdev-add' was not found" "$T/vmmd.log"; then
    echo "SKIP: fsd's helper mode does not answer fsdev-add yet (fsd/helper-exports.c is not plugged into fsd/main.c)"
    exit 77
  fi
}

connected() { grep -q "fsdev '$1': vcpu-worker $2 to fsd" "$T/vmmd.log"; }

wait_connected() {
  local id=$1 how=${2:-connected}
  for _ in $(seq 200); do
    connected "$id" "$how" && return 0
    skip_without_helper_mode
    kill -0 "$VMMD_PID" 2>/dev/null || fail "vmmd exited before fsdev '$id' $how"
    sleep 0.1
  done
  fail "timed out waiting for fsdev '$id' to be $how"
}

quit_vmmd() {
  q quit >/dev/null
  poll_until 100 "vmmd to exit" bash -c "! kill -0 $VMMD_PID"
  wait "$VMMD_PID" || fail "vmmd exited with $?"
  [ -z "$(leftovers)" ] || fail "processes left: $(leftovers)"
  VMMD_PID=
}

start_two_exports() {
  start_vmmd -fsdev "local,id=fs0,path=$T/share,security_model=mapped-xattr,fmode=0640" \
    -device virtio-9p-device,fsdev=fs0,mount_tag=share0,id=nine0 \
    -virtfs "local,path=$T/other,mount_tag=share1,security_model=none,readonly=on"
}

case_serve() {
  start_two_exports
  wait_connected fs0
  wait_connected share1
  grep -q "fsdev 'fs0': vcpu-worker connected to fsd (mount tag 'share0', msize [0-9]*)" "$T/vmmd.log" \
    || fail "no connection line with the mount tag"
  local fpid; fpid=$(helper_pid fsd)
  # fsd holds the directories vmmd opened and handed over.
  ls -l "/proc/$fpid/fd" | grep -q -- "-> $T/share\$" || fail "fsd does not hold $T/share"
  ls -l "/proc/$fpid/fd" | grep -q -- "-> $T/other\$" || fail "fsd does not hold $T/other"
  [ "$(awk '$1=="Seccomp:" {print $2}' "/proc/$fpid/status")" = 2 ] || fail "fsd is not filtered"
  # vcpu-worker holds a socket per device, not the exports.
  local vpid; vpid=$(helper_pid vcpu-worker)
  ! ls -l "/proc/$vpid/fd" | grep -qE -- "-> $T/(share|other)\$" || fail "vcpu-worker holds an export"
  quit_vmmd
}

case_restart() {
  start_two_exports
  wait_connected fs0
  wait_connected share1
  local old; old=$(helper_pid fsd)
  kill -KILL "$old"
  poll_until 200 "fsd restarted" bash -c "[ \"\$(timeout 20 '$BIN/vmmctl' -s '$SOCK' query-helpers | jq -r '.[] | select(.helper==\"fsd\") | .pid')\" != $old ]"
  wait_connected fs0 reconnected
  wait_connected share1 reconnected
  grep -q "virtio-9p 'nine0': reconnected to fsd" "$T/vmmd.log" || fail "vcpu-worker did not reconnect"
  kill -0 "$VMMD_PID" || fail "vmmd died"
  quit_vmmd
}

case_external() {
  "$BIN/fsd" --export "$T/share" --listen "unix:$T/fsd.sock" --security-model mapped-xattr \
    >"$T/fsd.log" 2>&1 &
  FSD_PID=$!
  poll_until 100 "fsd to listen" test -S "$T/fsd.sock"
  start_vmmd -helpers vcpu-worker -fsdev "local,id=ext,socket=$T/fsd.sock" \
    -device virtio-9p-device,fsdev=ext,mount_tag=ext \
    -virtfs "proxy,socket=$T/fsd.sock,mount_tag=ext2"
  wait_connected ext
  wait_connected ext2
  quit_vmmd
  if command -v python3 >/dev/null; then
    # sock_fd=N: a socket vmmd inherits, connected to the running fsd.
    python3 - "$BIN/vmmd" "$T/fsd.sock" "$SOCK" "$T/vmmd.log" <<'EOF' &
import os, socket, sys
vmmd, path, qmp, log = sys.argv[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
fd = s.fileno()
os.set_inheritable(fd, True)
os.setsid()
out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(out, 1)
os.dup2(out, 2)
os.execv(vmmd, [vmmd, "-sandbox", "on", "-qmp", f"unix:{qmp},server=on,wait=off", "-helpers", "vcpu-worker",
                "-fsdev", f"proxy,id=byfd,sock_fd={fd}", "-device", "virtio-9p-device,fsdev=byfd,mount_tag=fd"])
EOF
    VMMD_PID=$!
    wait_connected byfd
    quit_vmmd
  else
    echo "note: python3 missing, sock_fd= not tried"
  fi
}

expect_exit_1() {
  local msg=$1; shift
  local rc=0
  start_vmmd "$@"
  poll_until 200 "vmmd to exit" bash -c "! kill -0 $VMMD_PID"
  wait "$VMMD_PID" || rc=$?
  [ "$rc" = 1 ] || fail "vmmd $*: exit $rc, expected 1"
  grep -qF -- "$msg" "$T/vmmd.log" || fail "vmmd $*: no '$msg' in its output: $(cat "$T/vmmd.log")"
  [ -z "$(leftovers)" ] || fail "processes left: $(leftovers)"
  [ ! -e "$SOCK" ] || fail "QMP socket left behind"
  VMMD_PID=
}

case_bad_options() {
  expect_exit_1 "-fsdev local,id=f1,path=$T/share: security_model property not set" \
    -fsdev "local,id=f1,path=$T/share"
  expect_exit_1 "Valid options are: security_model=[passthrough|mapped-xattr|mapped-file|none]" \
    -fsdev "local,id=f1,path=$T/share"
  expect_exit_1 "-fsdev bogus,id=f1,path=$T/share,security_model=none: fsdev: fsdriver bogus not found" \
    -fsdev "bogus,id=f1,path=$T/share,security_model=none"
  expect_exit_1 "-fsdev local,id=f1,path=$T/share,security_model=none: Duplicate ID 'f1' for fsdev" \
    -fsdev "local,id=f1,path=$T/share,security_model=none" -fsdev "local,id=f1,path=$T/share,security_model=none"
  expect_exit_1 "mount tag 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' (32 bytes) is longer than maximum (31 bytes)" \
    -fsdev "local,id=f1,path=$T/share,security_model=none" \
    -device virtio-9p-device,fsdev=f1,mount_tag=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
  expect_exit_1 "-device virtio-9p-device,mount_tag=t: 9pfs device couldn't find fsdev with the id = NULL" \
    -device virtio-9p-device,mount_tag=t
  expect_exit_1 "fmode is only valid for mapped security modes" \
    -virtfs "local,path=$T/share,mount_tag=t,security_model=none,fmode=0600"
  expect_exit_1 "both socket and sock_fd properties are set" -fsdev "proxy,id=f1,socket=$T/x,sock_fd=3"
  # Found when vmmd opens the export or connects, after the helpers started.
  expect_exit_1 "-device virtio-9p-device,fsdev=f1,mount_tag=t: cannot initialize fsdev 'f1': failed to open '$T/missing': No such file or directory" \
    -fsdev "local,id=f1,path=$T/missing,security_model=none" -device virtio-9p-device,fsdev=f1,mount_tag=t
  expect_exit_1 "cannot initialize fsdev 'p1': failed to connect to '$T/nobody.sock'" \
    -fsdev "proxy,id=p1,socket=$T/nobody.sock" -device virtio-9p-device,fsdev=p1,mount_tag=t
}

case $CASE in
  serve) case_serve ;;
  restart) case_restart ;;
  external) case_external ;;
  bad-options) case_bad_options ;;
  *) fail "unknown case $CASE" ;;
esac
echo "PASS: fsdev $CASE"
