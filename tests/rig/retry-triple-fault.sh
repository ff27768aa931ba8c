#!/usr/bin/env bash
# retry-triple-fault.sh COMMAND...: runs a guest test once more when it failed
# after an L2 guest triple-faulted.
#
# Under the rig's nested SVM (QEMU TCG emulating it for L1's KVM), an L2 guest
# now and then takes a triple fault that no guest instruction explains (a #PF
# on instruction fetch with paging off, at the very first instructions; more
# often while other guests run). vmmd resets the VM as a PC would, but a test
# whose guest script ran halfway cannot judge what it sees. A second failure
# counts, and so does any failure without a triple fault.
set -uo pipefail
out=$(mktemp /tmp/retry-tf.XXXXXX)
trap 'rm -f "$out"' EXIT
"$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && grep -q "guest triple fault" "$out"; then
  echo "note: the guest triple-faulted during this failed run (nested SVM of the rig, docs/rig.md); running the test once more"
  "$@"
  rc=$?
fi
exit "$rc"
