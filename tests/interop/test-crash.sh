#!/usr/bin/env bash
# Crash consistency of our qcow2 writes: crash-writer writes through our block
# layer, is killed with SIGKILL after 50-500 ms, and then
#   - qemu-img check reports no corruption (leaks are allowed: exit 0 or 3);
#     with lazy_refcounts the image must be dirty, is reopened read-write
#     through our layer (which must repair it) and must then check clean;
#   - crash-writer --verify finds every acknowledged (flushed) write, through
#     our block layer and through qemu-img convert.
# Runs vary cluster size, refcount width, lazy_refcounts, extended_l2, compat,
# threads and O_DIRECT. Environment:
#   VMM_CRASH_RUNS  number of kills (50)         VMM_CRASH_SEED  base seed (random)
#   CRASH_WRITER    the crash-writer binary      VMM_CRASH_KEEP  directory to keep failed images in
#   VMM_CRASH_OPTS  qcow2 options for every run (default: varied per run)
set -uo pipefail

RUNS=${VMM_CRASH_RUNS:-50}
BASE_SEED=${VMM_CRASH_SEED:-$(( (RANDOM << 15) | RANDOM ))}
SIZE=$((64 << 20))
MAX_FAILURES=3
CW=${CRASH_WRITER:-${VMM_BIN_DIR:-}/../tests/interop/crash-writer}

skip() { echo "SKIP: $*"; exit 77; }
if [ "${VMM_CRASH_LONG_TEST:-}" = 1 ] && [ "${VMM_CRASH_LONG:-}" != 1 ]; then
    skip "the long crash test runs only when asked for: VMM_CRASH_LONG=1 ctest -L crash-long"
fi
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v jq >/dev/null || skip "jq not installed"
[ -x "$CW" ] || skip "crash-writer not built ($CW): the block layer (blockd/*.c) has not landed"

T=$(mktemp -d "${TMPDIR:-/tmp}/test-crash.XXXXXX")
WRITER=
cleanup() {
    if [ -n "$WRITER" ]; then kill -KILL "$WRITER" 2>/dev/null; wait "$WRITER" 2>/dev/null; fi
    rm -rf "$T"
}
trap cleanup EXIT

# The qcow2 creation options of run N, chosen from its seed.
run_options() {
    local r=$1 cs lazy rb compat=1.1 l2=off
    cs=$(echo 512 4096 65536 65536 2097152 | cut -d' ' -f$(( r % 5 + 1 )))
    rb=$(echo 16 16 1 64 8 | cut -d' ' -f$(( (r / 5) % 5 + 1 )))
    lazy=$([ $(( (r / 2) % 2 )) = 1 ] && echo on || echo off)
    if [ $(( r % 7 )) = 3 ] && [ "$lazy" = off ]; then compat=0.10 rb=16; fi
    if [ $(( r % 6 )) = 1 ] && [ "$compat" = 1.1 ] && [ "$cs" -ge 16384 ]; then l2=on; fi
    echo "cluster_size=$cs,refcount_bits=$rb,lazy_refcounts=$lazy,compat=$compat,extended_l2=$l2"
}

keep_failure() {
    local dir=${VMM_CRASH_KEEP:-${TMPDIR:-/tmp}}/crash-failure-$1
    mkdir -p "$dir" && cp --sparse=always "$T/crashed.qcow2" "$T/log" "$dir/" 2>/dev/null
    echo "  kept the image as the kill left it (crashed.qcow2) and the log in $dir"
}

failures=0
start=$SECONDS
for run in $(seq 1 "$RUNS"); do
    seed=$(( BASE_SEED + run ))
    RANDOM=$seed
    opts=${VMM_CRASH_OPTS:-$(run_options "$RANDOM")}
    delay_ms=$(( 50 + RANDOM % 451 ))
    wflags=()
    [ $(( RANDOM % 2 )) = 1 ] && wflags+=(--serial)
    [ $(( RANDOM % 4 )) = 0 ] && wflags+=(--nocache)
    what="run $run/$RUNS seed $seed [$opts ${wflags[*]:-} kill after ${delay_ms} ms]"

    rm -f "$T/img.qcow2" "$T/log"
    if ! qemu-img create -q -f qcow2 -o "$opts" "$T/img.qcow2" "$SIZE"; then
        echo "FAIL $what: qemu-img create"; failures=$((failures + 1)); continue
    fi
    "$CW" "${wflags[@]}" "$T/img.qcow2" qcow2 "$seed" "$T/log" 2>"$T/writer.err" &
    WRITER=$!
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    if ! kill -KILL "$WRITER" 2>/dev/null; then
        : # it ended by itself: wait tells how
    fi
    { wait "$WRITER"; st=$?; } 2>/dev/null; WRITER=   # (no "Killed" from the shell)
    if [ "$st" != 137 ]; then
        echo "FAIL $what: crash-writer exited with $st before the kill: $(cat "$T/writer.err")"
        failures=$((failures + 1)); keep_failure "$seed"
        [ "$failures" -ge "$MAX_FAILURES" ] && break; continue
    fi
    # The image as the kill left it, before anything repairs it: kept on failure.
    cp --sparse=always "$T/img.qcow2" "$T/crashed.qcow2"
    acked=$(grep -c "^f " "$T/log" 2>/dev/null); acked=${acked:-0}
    problem=
    if [[ $opts == *lazy_refcounts=on* ]]; then
        dirty=$(qemu-img info -U --output=json "$T/img.qcow2" | jq -r '."dirty-flag"')
        if [ "$acked" -gt 0 ] && [ "$dirty" != true ]; then
            problem="lazy_refcounts image not marked dirty after $acked acknowledged batches"
        fi
        vflags=(--rw)   # reopening read-write must repair the refcounts
    else
        vflags=()
    fi
    if [ -z "$problem" ] && [ ${#vflags[@]} = 0 ]; then
        qemu-img check -q "$T/img.qcow2" >"$T/check.out" 2>&1; rc=$?
        [ "$rc" = 0 ] || [ "$rc" = 3 ] || problem="qemu-img check exit $rc after the crash: $(cat "$T/check.out")"
    fi
    if [ -z "$problem" ]; then
        "$CW" --verify "${wflags[@]}" "${vflags[@]}" "$T/img.qcow2" qcow2 "$seed" "$T/log" >"$T/verify.out" 2>&1 ||
            problem="verify: $(cat "$T/verify.out")"
    fi
    if [ -z "$problem" ] && [ ${#vflags[@]} != 0 ]; then
        qemu-img check -q "$T/img.qcow2" >"$T/check.out" 2>&1; rc=$?
        [ "$rc" = 0 ] || [ "$rc" = 3 ] ||
            problem="qemu-img check exit $rc after our read-write reopen of the dirty image: $(cat "$T/check.out")"
    fi
    if [ -n "$problem" ]; then
        echo "FAIL $what: $problem"
        failures=$((failures + 1)); keep_failure "$seed"
        [ "$failures" -ge "$MAX_FAILURES" ] && { echo "stopping after $failures failures"; break; }
    else
        echo "ok   $what: $acked batches acknowledged"
    fi
done
echo "$RUNS runs (base seed $BASE_SEED) in $((SECONDS - start)) s, $failures failed"
[ "$failures" = 0 ]
