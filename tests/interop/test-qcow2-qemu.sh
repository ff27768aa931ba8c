#!/usr/bin/env bash
# Heavier qcow2 interop runs against qemu-img/qemu-io 7.2 (the unit test
# tests/unit/test-qcow2.c runs the same checks small):
#   1. the unit test program in heavy mode (QCOW2_HEAVY=1): images qemu-img
#      makes with every option class read back as qemu-img converts them and
#      take our writes (qemu-img check clean, compare equal), 4 seeds and 4x
#      the size; our creates are byte-identical to qemu-img's; zlib and zstd
#      compressed clusters; snapshots; QCOW2_CRASH_RUNS kill -9 runs per
#      crash case (default 60; 1000 for the long run).
#   2. with vmm-img built: vmm-img create for each option set equals
#      qemu-img create byte for byte, and vmm-img info --output=json agrees
#      with qemu-img info on every field (filename and actual-size aside).
# Env: VMM_BIN_DIR (vmm-img; the unit test is at $VMM_BIN_DIR/../tests/unit),
#      QCOW2_TEST (path of test-qcow2), QCOW2_CRASH_RUNS.
# Exits 77 (skip) when qemu-img/qemu-io or the unit test program are missing.
set -uo pipefail

BIN=${VMM_BIN_DIR:-}
TEST=${QCOW2_TEST:-$BIN/../tests/unit/test-qcow2}
VMM_IMG=$BIN/vmm-img
LIMIT=${QCOW2_STEP_TIMEOUT:-1500}

skip() { echo "SKIP: $*"; exit 77; }
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io not installed (qemu-utils)"
[ -x "$TEST" ] || skip "test-qcow2 not built ($TEST)"

T=$(mktemp -d "${TMPDIR:-/tmp}/test-qcow2-qemu.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
failed=0 passed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }

# 1. the unit test, heavy
for path in /qcow2/interop /qcow2/create-identical /qcow2/compressed /qcow2/snapshots-ours \
            /qcow2/check-repair /qcow2/concurrent /qcow2/crash /qcow2/small-caches /qcow2/amend; do
    if QCOW2_HEAVY=1 QCOW2_CRASH_RUNS=${QCOW2_CRASH_RUNS:-60} timeout "$LIMIT" "$TEST" -p "$path" \
        >"$T/unit.log" 2>&1; then
        ok "test-qcow2 $path (heavy)"
    else
        fail "test-qcow2 $path (heavy)"
        grep -v '^\(Leaked\|Repairing\|ERROR cluster\|ERROR OFLAG\)' "$T/unit.log" | tail -20
    fi
done

# 2. vmm-img create/info against qemu-img
if [ -x "$VMM_IMG" ]; then
    command -v jq >/dev/null || skip "jq not installed"
    cd "$T" || exit 1
    truncate -s 10M base.raw
    while read -r opts size; do
        rm -f ours.qcow2 theirs.qcow2
        o=${opts/#-/}
        if ! timeout 60 "$VMM_IMG" create -q -f qcow2 ${o:+-o "$o"} ours.qcow2 "$size" >"$T/out" 2>&1; then
            fail "vmm-img create -o '$o' $size: $(cat "$T/out")"
            continue
        fi
        timeout 60 qemu-img create -q -f qcow2 ${o:+-o "$o"} theirs.qcow2 "$size"
        if cmp -s ours.qcow2 theirs.qcow2; then
            ok "create -o '$o' $size: identical to qemu-img's"
        else
            fail "create -o '$o' $size: differs from qemu-img's"
        fi
        filt='del(.filename, ."actual-size")'
        a=$(qemu-img info --output=json ours.qcow2 | jq -S "$filt")
        b=$(qemu-img info --output=json theirs.qcow2 | jq -S "$filt")
        c=$(timeout 60 "$VMM_IMG" info --output=json ours.qcow2 | jq -S "$filt")
        if [ "$a" = "$b" ] && [ "$c" = "$b" ]; then
            ok "info -o '$o': vmm-img and qemu-img agree"
        else
            fail "info -o '$o': differs"
            diff <(echo "$c") <(echo "$b") | head -20
        fi
        if qemu-img check -q ours.qcow2; then ok "check -o '$o'"; else fail "check -o '$o'"; fi
    done <<'CASES'
- 1G
compat=0.10 100M
cluster_size=512 10M
cluster_size=4096 10M
cluster_size=2M 1G
refcount_bits=1 10M
refcount_bits=64,cluster_size=512 10M
lazy_refcounts=on 10M
extended_l2=on 10M
compression_type=zstd 10M
preallocation=metadata 1M
preallocation=falloc,cluster_size=4096 3M
preallocation=full 1M
backing_file=base.raw,backing_fmt=raw 10M
CASES
else
    echo "skip vmm-img comparisons: $VMM_IMG not built"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
