#!/usr/bin/env bash
# blockd --daemon: exports added and removed at run time over its control
# socket (vmmctl --control), served to nbdinfo, nbdcopy and qemu-img.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
for t in nbdinfo nbdcopy qemu-img qemu-io; do
  command -v $t >/dev/null || { echo "SKIP: $t not installed"; exit 77; }
done
T=$(mktemp -d /tmp/blockd-daemon.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/d.log" ] && cat "$T/d.log" >&2; exit 1; }
ctl() { timeout 20 "$BIN/vmmctl" --control "$T/ctl" --raw "$@"; }
list() { nbdinfo --list "nbd+unix:///?socket=$T/nbd.sock" 2>/dev/null | sed -n 's/^export="\(.*\)":$/\1/p' | sort | tr '\n' ' '; }

qemu-img create -q -f raw "$T/a.raw" 16M
qemu-io -f raw -c "write -P 0x61 0 1M" "$T/a.raw" >/dev/null
qemu-img create -q -f qcow2 "$T/b.qcow2" 32M
qemu-io -f qcow2 -c "write -P 0x62 4M 1M" "$T/b.qcow2" >/dev/null

"$BIN/blockd" --daemon --control "$T/ctl" --listen "unix:$T/nbd.sock" 2>"$T/d.log" &
PID=$!
for _ in $(seq 100); do [ -S "$T/ctl" ] && [ -S "$T/nbd.sock" ] && break; sleep 0.1; done
[ -S "$T/ctl" ] || fail "no control socket"
# It serves under its seccomp filter (the filesystem kept: exports come by name).
for _ in $(seq 50); do grep -q "^Seccomp:[[:space:]]*2" "/proc/$PID/status" && break; sleep 0.1; done
grep -q "^Seccomp:[[:space:]]*2" "/proc/$PID/status" || fail "blockd --daemon is not under seccomp"

ctl nbd-export-add name=a filename="$T/a.raw" format=raw >/dev/null || fail "add a"
ctl nbd-export-add name=b filename="$T/b.qcow2" format=qcow2 read-only=true description=second >/dev/null || fail "add b"
[ "$(list)" = "a b " ] || fail "exports listed: '$(list)'"
ctl query-nbd-exports | jq -e '.exports | length == 2 and (map(select(.name=="b"))[0]["read-only"] == true)' >/dev/null \
  || fail "query-nbd-exports: $(ctl query-nbd-exports)"
qemu-img compare -f raw -F raw "nbd+unix:///a?socket=$T/nbd.sock" "$T/a.raw" >/dev/null || fail "export a content"
qemu-img compare -f raw -F qcow2 "nbd+unix:///b?socket=$T/nbd.sock" "$T/b.qcow2" >/dev/null || fail "export b content"
qemu-io -f raw -c "write -P 0x71 1M 64k" "nbd+unix:///a?socket=$T/nbd.sock" >/dev/null || fail "write to a"

# A TCP listener added at run time (port 0: any free port).
port=$(ctl nbd-listen address=127.0.0.1:0 | jq .port)
[ "$port" -gt 0 ] || fail "no port"
nbdinfo --size "nbd://127.0.0.1:$port/b" | grep -q "^33554432$" || fail "b over TCP"

# Removal, and errors that leave the daemon serving.
ctl nbd-export-remove name=a >/dev/null || fail "remove a"
[ "$(list)" = "b " ] || fail "after removal: '$(list)'"
rc=0; ctl nbd-export-add name=b filename="$T/a.raw" 2>"$T/e" || rc=$?
[ $rc -eq 1 ] || fail "duplicate export name accepted (rc=$rc)"
rc=0; ctl nbd-export-add name=c filename="$T/missing.img" 2>"$T/e" || rc=$?
[ $rc -eq 1 ] && grep -q "missing.img" "$T/e" || fail "missing image: rc=$rc $(cat "$T/e")"
rc=0; ctl no-such-command 2>"$T/e" || rc=$?
[ $rc -eq 1 ] && grep -q CommandNotFound "$T/e" || fail "unknown command: rc=$rc $(cat "$T/e")"
[ "$(list)" = "b " ] || fail "daemon not serving after errors"

kill -TERM "$PID"
for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
wait "$PID" || fail "daemon exited non-zero"
PID=
[ ! -e "$T/ctl" ] || fail "control socket left behind"
echo "PASS: blockd --daemon"
