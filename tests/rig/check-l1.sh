#!/bin/sh
# check-l1.sh KVM_PROBE WORK_DIR...: the rig's self-test, run as a rig job.
# Checks the environment jobs rely on: a usable /dev/kvm with SVM and nested
# paging, writable work trees, and (in L1) a read-only host root and tmpfs /tmp.
failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
check() {
    what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

kvm_probe=$1
shift

svm_count() { grep -c -w svm /proc/cpuinfo; }
npt_enabled() {
    npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)
    [ "$npt" = Y ] || [ "$npt" = 1 ]
}
dir_writable() {
    f="$1/.rig-write-probe.$$"
    echo probe > "$f" && [ "$(cat "$f")" = probe ] && rm -f "$f"
}
host_root_readonly() {
    if touch /etc/.rig-write-probe.$$ 2>/dev/null; then
        rm -f /etc/.rig-write-probe.$$
        return 1
    fi
    return 0
}
is_tmpfs() { [ "$(stat -f -c %T "$1")" = tmpfs ]; }

echo "rig self-test in mode '${RIG_MODE:-?}' on $(uname -r)"
check "/dev/kvm is a character device" test -c /dev/kvm
check "kvm-probe: API version 12 and KVM_CREATE_VM" "$kvm_probe"
for d in "$@"; do
    check "work tree $d is writable" dir_writable "$d"
done
if [ "${RIG_MODE:-}" = l1 ]; then
    n=$(svm_count)
    check "svm in /proc/cpuinfo ($n cpus)" test "${n:-0}" -gt 0
    check "kvm_amd loaded with npt=$(cat /sys/module/kvm_amd/parameters/npt 2>/dev/null)" npt_enabled
    check "host root is read-only" host_root_readonly
    check "/tmp is a tmpfs" is_tmpfs /tmp
    check "/dev/shm is a tmpfs" is_tmpfs /dev/shm
    check "loop, nbd and tun are usable" test -e /dev/loop-control -a -e /dev/nbd0 -a -e /dev/net/tun
else
    echo "skip L1-only checks (mode ${RIG_MODE:-unset})"
fi
[ "$failures" = 0 ] || { echo "$failures check(s) failed"; exit 1; }
echo "all checks passed"
