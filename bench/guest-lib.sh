# shellcheck shell=bash
# Sourced by bench-9p.sh and bench-guest.sh: what both do with their L2 guests.

. "$(dirname "${BASH_SOURCE[0]}")/../tests/rig/qemu-poweroff.sh"
GUEST_FAULT_RE='guest triple fault|asm_exc_double_fault'

# guest_faulted OUT NAME: whether the run NAME ("qemu": QEMU with
# QEMU_SHUTDOWN_TRACE) that wrote OUT ended in a fault of the guest that the
# rig's nested SVM makes (docs/rig.md), not in a failure of the VMM or of the
# workload. A reset after a kernel panic is the guest's own.
guest_faulted() {
  grep -aq -E "$GUEST_FAULT_RE" "$1" && return 0
  [ "${2:-}" = qemu ] && ! qemu_powered_off "$1" &&
    ! grep -aq "Kernel panic" "$1" && ! grep -aq "^qemu-system-x86_64:" "$1"
}
show_fault() { # OUT
  if grep -aq -E "$GUEST_FAULT_RE" "$1"; then grep -a -m1 -A12 -E "$GUEST_FAULT_RE" "$1" >&2 || true
  else echo "QEMU ended without the guest's poweroff (a reset under -no-reboot); its last lines:" >&2; tail -5 "$1" >&2; fi
}

# guest_nap PID: waits 5 s, or less if PID (a child of this shell) ends
# first. The watchers check on a run this way, not every 0.5 s: each check
# forks, in the L1 that is being measured.
guest_nap() {
  local nap
  sleep 5 &
  nap=$!
  wait -n "$1" "$nap" 2>/dev/null || true
  kill "$nap" 2>/dev/null || true
  wait "$nap" 2>/dev/null || true
}
