#!/bin/sh
# expect-status.sh N COMMAND...: runs COMMAND; succeeds iff it exits with N.
# 77 (skip) passes through unless N is 77, so a skipped rig stays skipped.
want=$1
shift
"$@"
rc=$?
if [ "$rc" = "$want" ]; then
    echo "expect-status: got exit status $rc as expected"
    exit 0
fi
[ "$rc" = 77 ] && exit 77
echo "expect-status: expected exit status $want from '$*', got $rc" >&2
exit 1
