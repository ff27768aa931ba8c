#!/usr/bin/env bash
# In the rig's L1: vmmd boots Debian's stock kernel through the process split
# (guest RAM from vmmd, vCPUs and devices in the sandboxed vcpu-worker) to the
# busybox /init of the kit's L2 initramfs, which prints a marker and the CPU
# count on COM1 and powers off through ACPI S5; vmmd then ends with status 0
# and leaves nothing. Booted: the bzImage (64-bit entry) and the vmlinux (PVH
# entry) with one vCPU, and the vmlinux with -smp 2, whose guest runs a shell
# on COM1 fed from vmmd's stdin (-serial stdio, the default).
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
: "${RIG_KIT:?RIG_KIT is not set: run this through the rig}"
. "$RIG_KIT/kit.env"
[ -c /dev/kvm ] || { echo "FAIL: no /dev/kvm (RIG_MODE=${RIG_MODE:-?})"; exit 1; }
T=$(mktemp -d /tmp/rig-boot.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true; exec 3>&- 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; tr -d '\r' <"$T/out" | tail -60 >&2; grep -a -m1 "guest triple fault" "$T/out" >&2 || true; exit 1; }

# No pipes into grep -q (pipefail and SIGPIPE) and no <(...) (L1 has no /dev/fd).
has() { tr -d '\r' <"$T/out" >"$T/out.clean"; grep -q -- "$1" "$T/out.clean"; }

# wait_for TEXT SECONDS: TEXT in the output, while vmmd runs.
wait_for() {
  local end=$((SECONDS + $2)); while [ "$SECONDS" -lt "$end" ]; do
    has "$1" && return 0
    kill -0 "$PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# wait_exit LABEL: vmmd's status in RC, within 300 s.
wait_exit() {
  end=$((SECONDS + 300)); while [ "$SECONDS" -lt "$end" ]; do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$PID" 2>/dev/null && fail "$1: vmmd still running after 300 s"
  RC=0
  wait "$PID" || RC=$?
  PID=
}

check_end() { # LABEL CPUS MS
  has VMM-L2-MARKER || fail "$1: no marker from the guest"
  has "VMM-L2-CPUS $2\$" || fail "$1: the guest does not see $2 CPU(s)"
  [ "$RC" -eq 0 ] || fail "$1: vmmd exited $RC after the guest powered off"
  grep -q "the guest shut down (guest-poweroff)" "$T/out" || fail "$1: no guest poweroff"
  # A triple fault on the very first exits of a boot is the nested TCG SVM of
  # the rig (docs/rig.md): the VM resets as a PC would and boots again. One
  # later in the boot is ours.
  if grep "guest triple fault" "$T/out" | grep -qv "after [0-9] exits"; then
    fail "$1: triple fault during the boot"
  fi
  local early
  early=$(grep -c "guest triple fault" "$T/out" || true)
  [ "$early" -eq 0 ] || echo "note: $1: $early triple fault(s) at the first instructions, recovered by the reset"
  [ ! -e "$T/qmp.sock" ] || fail "$1: QMP socket left behind"
  # The helpers this vmmd started (other tests may run theirs meanwhile).
  local pid
  for pid in $(sed -n 's/.*helper [a-z-]* (pid \([0-9]*\)) up.*/\1/p' "$T/out.clean"); do
    kill -0 "$pid" 2>/dev/null && fail "$1: helper pid $pid is left"
  done
  echo "$1: Debian's kernel booted to userspace through vmmd, saw $2 CPU(s) and powered off in $3 ms"
}

boot() { # KERNEL LABEL
  local start
  start=$(date +%s%N)
  setsid "$BIN/vmmd" -sandbox on,spawn=deny -kernel "$1" -initrd "$RIG_INITRAMFS_L2" -m 256M \
      -append "console=ttyS0 panic=-1 quiet" -qmp "unix:$T/qmp.sock,server=on,wait=off" \
      </dev/null >"$T/out" 2>&1 &
  PID=$!
  wait_exit "$2"
  check_end "$2" 1 $((($(date +%s%N) - start) / 1000000))
}

# Two vCPUs (the AP comes up through INIT/SIPI in the in-kernel LAPIC), and
# the shell: what we type on vmmd's stdin reaches the guest through COM1's
# receiver; the guest computes 6*7, so the echo of our own input cannot pass.
boot_smp_shell() {
  local start
  start=$(date +%s%N)
  mkfifo "$T/in"
  setsid "$BIN/vmmd" -sandbox on,spawn=deny -kernel "$RIG_KERNEL" -initrd "$RIG_INITRAMFS_L2" \
      -m 256M -smp 2 -append "console=ttyS0 panic=-1 quiet vmm_l2=shell" -nographic \
      <"$T/in" >"$T/out" 2>&1 &
  PID=$!
  exec 3>"$T/in"
  wait_for "VMM-L2-SHELL" 300 || fail "PVH, 2 vCPUs: no shell prompt"
  sleep 1
  printf 'echo VMM-SUM-$((6*7))\n' >&3
  wait_for "VMM-SUM-42" 120 || fail "PVH, 2 vCPUs: the shell did not run our input"
  printf 'exit\n' >&3
  wait_exit "PVH, 2 vCPUs"
  exec 3>&-
  check_end "PVH, 2 vCPUs, shell on stdin" 2 $((($(date +%s%N) - start) / 1000000))
}

boot "$RIG_BZIMAGE" bzImage
boot "$RIG_KERNEL" "vmlinux (PVH)"
boot_smp_shell
