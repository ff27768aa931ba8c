# shellcheck shell=bash
# Sourced by bench-9p.sh and bench-guest.sh: what both do with their L2 guests.

# QEMU run with -no-reboot ends without a word when its guest resets, so a
# triple fault looks like a poweroff. This trace line says why it stopped:
# reason=6 is the guest's poweroff, reason=7 a reset.
QEMU_SHUTDOWN_TRACE=(-trace qemu_system_shutdown_request)
GUEST_FAULT_RE='guest triple fault|asm_exc_double_fault|qemu_system_shutdown_request reason=7'

# guest_faulted OUT: whether the run that wrote OUT ended in a fault of the
# guest that the rig's nested SVM makes (docs/rig.md), not in a failure of the
# VMM or of the workload. A reset after a kernel panic is the guest's own.
guest_faulted() { grep -aq -E "$GUEST_FAULT_RE" "$1" && ! grep -aq "Kernel panic" "$1"; }
show_fault() { grep -a -m1 -A12 -E "$GUEST_FAULT_RE" "$1" >&2 || true; }

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
