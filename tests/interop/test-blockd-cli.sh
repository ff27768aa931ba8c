#!/usr/bin/env bash
# blockd standalone (qemu-nbd's options) against the real NBD clients:
# nbdinfo, nbdcopy, qemu-io and qemu-img.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
for t in nbdinfo nbdcopy qemu-img qemu-io; do
  command -v $t >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
[ -x "$BIN/blockd" ] || { echo "SKIP: blockd not built"; exit 77; }
T=$(mktemp -d /tmp/blockd-cli.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$T"/*.log; do [ -f "$f" ] && { echo "--- $f"; cat "$f"; }; done; exit 1; }
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; fail "no socket $1"; }
wait_gone() { for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; fail "pid $1 still running"; }
uri() { echo "nbd+unix:///${2:-}?socket=$1"; }

# A raw and a qcow2 image with a known pattern (made by qemu-img / qemu-io).
qemu-img create -q -f raw "$T/a.raw" 64M
qemu-io -f raw -c "write -P 0x5a 1M 3M" -c "write -P 0xa5 40M 1M" "$T/a.raw" >/dev/null
qemu-img convert -f raw -O qcow2 "$T/a.raw" "$T/a.qcow2"
cp "$T/a.raw" "$T/orig.raw"

# 1. Unix socket, raw, default export: nbdinfo sees size and flags; nbdcopy reads it back.
"$BIN/blockd" -k "$T/s1" -f raw -t "$T/a.raw" 2>"$T/b1.log" & PIDS+=($!)
wait_sock "$T/s1"
nbdinfo --json "$(uri "$T/s1")" >"$T/info.json" || fail "nbdinfo"
jq -e '.exports[0]["export-size"] == 67108864 and .exports[0]["is_read_only"] == false and
       .exports[0]["can_flush"] == true and .exports[0]["can_zero"] == true' "$T/info.json" >/dev/null \
  || fail "nbdinfo fields: $(cat "$T/info.json")"
nbdcopy "$(uri "$T/s1")" "$T/out.raw" || fail "nbdcopy from blockd"
cmp "$T/a.raw" "$T/out.raw" || fail "nbdcopy content differs"
# block status: the holes of the raw image are reported as holes.
nbdinfo --map "$(uri "$T/s1")" | grep -q "hole" || fail "no holes in --map"
# writes through qemu-io, read back by qemu-img compare against an expected copy
qemu-io -f raw -c "write -P 0x33 8M 64k" "$(uri "$T/s1")" >/dev/null || fail "qemu-io write"
cp "$T/out.raw" "$T/expect.raw"
qemu-io -f raw -c "write -P 0x33 8M 64k" "$T/expect.raw" >/dev/null
qemu-img compare -f raw -F raw "$(uri "$T/s1")" "$T/expect.raw" >/dev/null || fail "qemu-img compare after write"
kill -TERM "${PIDS[-1]}"; wait_gone "${PIDS[-1]}"

# 2. qcow2 over TCP on loopback, read-only, named export: writes refused.
port=$((20000 + RANDOM % 20000))
"$BIN/blockd" -b 127.0.0.1 -p "$port" -x disk -D "test disk" -r -t "$T/a.qcow2" 2>"$T/b2.log" & PIDS+=($!)
for _ in $(seq 100); do nbdinfo --list "nbd://127.0.0.1:$port/" >"$T/list" 2>/dev/null && break; sleep 0.1; done
grep -q "export=\"\?disk" "$T/list" || grep -q "disk" "$T/list" || fail "--list: $(cat "$T/list")"
grep -q "test disk" "$T/list" || fail "description not listed"
nbdinfo --json "nbd://127.0.0.1:$port/disk" | jq -e '.exports[0].is_read_only == true' >/dev/null || fail "not read-only"
if qemu-io -f raw -c "write 0 4k" "nbd://127.0.0.1:$port/disk" >"$T/w.out" 2>&1 && ! grep -qi "denied\|read-only\|not permitted\|error" "$T/w.out"; then
  fail "write to a read-only export succeeded: $(cat "$T/w.out")"
fi
qemu-img compare -f raw -F raw "nbd://127.0.0.1:$port/disk" "$T/orig.raw" >/dev/null || fail "qcow2 export content"
# vmm-img as the client of blockd: info, map (block status) and convert agree with qemu-img's.
if [ -x "$BIN/vmm-img" ]; then
  [ "$("$BIN/vmm-img" info --output=json "nbd://127.0.0.1:$port/disk" | jq '.["virtual-size"]')" = 67108864 ] ||
    fail "vmm-img info over NBD"
  "$BIN/vmm-img" map --output=json "nbd://127.0.0.1:$port/disk" | jq -c '.[] | [.start, .length, .data, .zero]' >"$T/map.ours"
  qemu-img map --output=json "nbd://127.0.0.1:$port/disk" | jq -c '.[] | [.start, .length, .data, .zero]' >"$T/map.qemu"
  cmp -s "$T/map.ours" "$T/map.qemu" || fail "vmm-img map over NBD differs from qemu-img's: $(diff "$T/map.ours" "$T/map.qemu")"
  "$BIN/vmm-img" convert -O qcow2 "nbd://127.0.0.1:$port/disk" "$T/conv.qcow2" || fail "vmm-img convert from blockd"
  qemu-img compare -f qcow2 -F raw "$T/conv.qcow2" "$T/orig.raw" >/dev/null || fail "vmm-img convert from blockd: content"
fi
kill -TERM "${PIDS[-1]}"; wait_gone "${PIDS[-1]}"

# 2b. A sandboxed qcow2 export takes 128 MiB of writes from many requests in
# flight: the workers' heaps grow and shrink (glibc then opens
# /proc/sys/vm/overcommit_memory, which must fail, not kill blockd).
qemu-img create -q -f qcow2 "$T/w.qcow2" 128M
head -c 128M /dev/urandom >"$T/w.src"
"$BIN/blockd" -k "$T/s2b" -f qcow2 -t "$T/w.qcow2" 2>"$T/b2b.log" & PIDS+=($!)
wait_sock "$T/s2b"
nbdcopy --requests=32 "$T/w.src" "$(uri "$T/s2b")" || fail "nbdcopy into a qcow2 export"
kill -0 "${PIDS[-1]}" || fail "blockd died during the writes"
kill -TERM "${PIDS[-1]}"; wait_gone "${PIDS[-1]}"
qemu-img compare -f qcow2 -F raw "$T/w.qcow2" "$T/w.src" >/dev/null || fail "qcow2 export: written content differs"
qemu-img check -q "$T/w.qcow2" || fail "qcow2 export: check after the writes"

# 3. Without --persistent blockd exits after its last client.
"$BIN/blockd" -k "$T/s3" -f raw "$T/a.raw" 2>"$T/b3.log" & pid=$!; PIDS+=($pid)
wait_sock "$T/s3"
nbdinfo "$(uri "$T/s3")" >/dev/null || fail "nbdinfo on s3"
wait_gone "$pid"

# 4. --fork and --pid-file: the parent returns once the child listens.
"$BIN/blockd" --fork --pid-file "$T/pid" -k "$T/s4" -f raw -t "$T/a.raw" 2>"$T/b4.log" || fail "--fork"
pid=$(cat "$T/pid"); PIDS+=($pid)
[ -S "$T/s4" ] || fail "not listening when --fork returned"
nbdinfo "$(uri "$T/s4")" >/dev/null || fail "nbdinfo on forked blockd"
# Serving, it is sandboxed (seccomp filter, no capabilities) and it removes its
# socket and pid file when it ends.
grep -q "^Seccomp:[[:space:]]*2" "/proc/$pid/status" || fail "standalone blockd is not under seccomp"
grep -q "^CapEff:[[:space:]]*0000000000000000" "/proc/$pid/status" || fail "standalone blockd kept capabilities"
kill -TERM "$pid"; wait_gone "$pid"
[ ! -e "$T/s4" ] || fail "socket left behind by the sandboxed blockd"
[ ! -e "$T/pid" ] || fail "pid file left behind by the sandboxed blockd"
"$BIN/blockd" --sandbox off --fork --pid-file "$T/pid" -k "$T/s4" -f raw -t "$T/a.raw" 2>"$T/b4.log" || fail "--sandbox off"
pid=$(cat "$T/pid"); PIDS+=($pid)
grep -q "^Seccomp:[[:space:]]*0" "/proc/$pid/status" || fail "--sandbox off: still under seccomp"
kill -TERM "$pid"; wait_gone "$pid"
"$BIN/blockd" --sandbox bogus -k "$T/s4" -f raw "$T/a.raw" 2>"$T/b4.log" && fail "--sandbox bogus accepted"
grep -q -- "--sandbox" "$T/b4.log" || fail "--sandbox bogus: the error does not name the option: $(cat "$T/b4.log")"

# 5. Two clients sharing one export (--shared=2), and a second writer of the same
# image refused by the image lock (no share-rw).
"$BIN/blockd" -k "$T/s5" -f raw -e 2 -t "$T/a.raw" 2>"$T/b5.log" & pid=$!; PIDS+=($pid)
wait_sock "$T/s5"
qemu-io -f raw -c "write -P 0x44 0 64k" -c "sleep 1000" "$(uri "$T/s5")" >/dev/null 2>&1 & c1=$!
qemu-io -f raw -c "write -P 0x45 1M 64k" -c "sleep 1000" "$(uri "$T/s5")" >/dev/null 2>&1 & c2=$!
wait "$c1" || fail "first of two shared clients failed"
wait "$c2" || fail "second of two shared clients failed"
qemu-io -f raw -c "read -P 0x44 0 64k" -c "read -P 0x45 1M 64k" "$(uri "$T/s5")" >"$T/r5" 2>&1 || fail "shared writes: $(cat "$T/r5")"
grep -q "Pattern verification failed" "$T/r5" && fail "shared writes not visible: $(cat "$T/r5")"
if "$BIN/blockd" -k "$T/s6" -f raw "$T/a.raw" 2>"$T/e.log"; then fail "second writer was not refused"; fi
grep -q 'Failed to get .*"write" lock' "$T/e.log" || fail "no lock error: $(cat "$T/e.log")"
grep -q "Is another process using the image" "$T/e.log" || fail "lock error lacks QEMU's hint: $(cat "$T/e.log")"
kill -TERM "$pid"; wait_gone "$pid"

# 6. Bad input: clear errors, non-zero exit.
if "$BIN/blockd" -k "$T/s7" -f qcow2 "$T/a.raw" 2>"$T/e.log"; then fail "raw opened as qcow2"; fi
grep -q "a.raw" "$T/e.log" || fail "error does not name the file: $(cat "$T/e.log")"
if "$BIN/blockd" -k "$T/s7" "$T/missing.img" 2>"$T/e.log"; then fail "missing file served"; fi
grep -q "missing.img" "$T/e.log" || fail "error does not name the missing file"
if "$BIN/blockd" -k "$T/s7" -p 1 "$T/a.raw" 2>"$T/e.log"; then fail "--socket with --port accepted"; fi
echo "PASS: blockd standalone"
