#!/usr/bin/env bash
# retry-triple-fault.sh COMMAND...: runs a guest test again (up to twice) when
# it failed after an L2 guest triple-faulted.
#
# Under the rig's nested SVM (QEMU TCG emulating it for L1's KVM), an L2 guest
# now and then takes a triple fault that no guest instruction explains (a #PF
# on instruction fetch with paging off, at the very first instructions, or a
# #PF/#UD in the middle of a boot). vmmd resets the VM as a PC would, but a
# test whose guest script ran halfway cannot judge what it sees. The same
# fault inside the guest's kernel (a #PF at the page-fault handler's first
# access, recursing into a double fault: "asm_exc_double_fault" in its oops)
# ended a guest of QEMU's in a CI run (rig/9p-qemu) and counts too. A test that
# boots five guests meets one often enough that one retry was not enough
# (a CI run failed with both attempts hit). A failure without a triple fault
# counts at once; so does the third attempt's. QEMU run with -no-reboot ends
# without a word when its guest resets: a test that runs QEMU says "guest
# triple fault" itself when QEMU ended without the guest's poweroff.
set -uo pipefail
out=$(mktemp /tmp/retry-tf.XXXXXX)
trap 'rm -f "$out"' EXIT
attempt=1
while :; do
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 0 ] || [ "$rc" -eq 77 ] || [ "$attempt" -ge 3 ] ||
    ! grep -aq -E "guest triple fault|asm_exc_double_fault" "$out"; then
    exit "$rc"
  fi
  attempt=$((attempt + 1))
  echo "note: the guest triple- or double-faulted during this failed run (nested SVM of the rig, docs/rig.md); running the test again (attempt $attempt of 3)"
done
