#!/bin/bash
# Interop: vmmctl against the real QMP peer, QEMU. Starts a machine-less QEMU
# with a QMP socket and drives it with vmmctl one-shot and interactive.
# Needs $VMM_BIN_DIR/vmmctl; exits 77 (ctest skip) without qemu-system-x86_64.
set -u

QEMU=${QEMU:-qemu-system-x86_64}
VMMCTL=${VMM_BIN_DIR:-}/vmmctl
WAIT=30 # seconds; bounds every wait in this script

if ! command -v "$QEMU" >/dev/null 2>&1; then
    echo "SKIP: $QEMU not found (install qemu-system-x86)"
    exit 77
fi
if [ -z "${VMM_BIN_DIR:-}" ] || [ ! -x "$VMMCTL" ]; then
    echo "FAIL: vmmctl not found at '$VMMCTL' (set VMM_BIN_DIR)"
    exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/test-vmmctl-qemu.XXXXXX") || exit 1
SOCK=$TMP/qmp.sock
QEMU_PID=

cleanup() {
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null
        wait "$QEMU_PID" 2>/dev/null
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

failures=0
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
pass() {
    echo "ok: $*"
}

# Runs vmmctl with a bound; stdout to $TMP/out, stderr to $TMP/err, status in $rc.
vmmctl() {
    timeout "$WAIT" "$VMMCTL" -s "$SOCK" "$@" >"$TMP/out" 2>"$TMP/err"
    rc=$?
}

show_output() {
    echo "--- stdout"; cat "$TMP/out"
    echo "--- stderr"; cat "$TMP/err"
}

"$QEMU" -M none -display none -nodefaults -qmp "unix:$SOCK,server=on,wait=off" \
    >"$TMP/qemu.log" 2>&1 &
QEMU_PID=$!

for _ in $(seq $((WAIT * 10))); do
    [ -S "$SOCK" ] && break
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.1
done
if [ ! -S "$SOCK" ]; then
    echo "FAIL: QEMU did not create $SOCK within $WAIT s"
    cat "$TMP/qemu.log"
    exit 1
fi

# One-shot: query-version returns the "qemu" version triple.
vmmctl query-version
if [ $rc -eq 0 ] && grep -q '"qemu"' "$TMP/out" && grep -q '"major"' "$TMP/out"; then
    pass "query-version"
else
    fail "query-version (exit $rc)"; show_output
fi

# Compact output is one line of JSON holding "status".
vmmctl --raw query-status
if [ $rc -eq 0 ] && grep -q '"status":"' "$TMP/out" && [ "$(wc -l <"$TMP/out")" -eq 1 ]; then
    pass "query-status --raw"
else
    fail "query-status --raw (exit $rc)"; show_output
fi

# Typed key=value arguments reach QEMU: qom-get with two string arguments.
vmmctl qom-get path=/machine property=type
if [ $rc -eq 0 ] && grep -q '"none-machine"' "$TMP/out"; then
    pass "qom-get with arguments"
else
    fail "qom-get with arguments (exit $rc)"; show_output
fi

# A raw JSON request.
vmmctl '{"execute": "query-status"}'
if [ $rc -eq 0 ] && grep -q '"status"' "$TMP/out"; then
    pass "raw JSON request"
else
    fail "raw JSON request (exit $rc)"; show_output
fi

# An unknown command is QEMU's CommandNotFound error, exit status 1.
vmmctl no-such-command
if [ $rc -eq 1 ] && grep -q '^error: CommandNotFound: ' "$TMP/err"; then
    pass "unknown command"
else
    fail "unknown command (exit $rc, expected 1)"; show_output
fi

# A wrong argument type is QEMU's GenericError, exit status 1.
vmmctl qom-get path=1 property=type
if [ $rc -eq 1 ] && grep -q '^error: GenericError: ' "$TMP/err"; then
    pass "argument of the wrong type"
else
    fail "argument of the wrong type (exit $rc, expected 1)"; show_output
fi

# stop, then --wait-event RESUME with cont: the reply and then the event.
vmmctl stop
vmmctl --raw --wait-event RESUME cont
if [ $rc -eq 0 ] && [ "$(sed -n 1p "$TMP/out")" = '{}' ] &&
    sed -n 2p "$TMP/out" | grep -q '"event":"RESUME"'; then
    pass "--wait-event"
else
    fail "--wait-event (exit $rc)"; show_output
fi

# Interactive mode: two commands from a here-doc, two replies in order.
timeout "$WAIT" "$VMMCTL" -s "$SOCK" --raw >"$TMP/out" 2>"$TMP/err" <<'EOF'
query-status
# comments and blank lines are skipped

{"execute": "query-version"}
EOF
rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l <"$TMP/out")" -eq 2 ] &&
    sed -n 1p "$TMP/out" | grep -q '"status"' &&
    sed -n 2p "$TMP/out" | grep -q '"qemu"'; then
    pass "interactive mode"
else
    fail "interactive mode (exit $rc)"; show_output
fi

# A socket nobody listens on: exit status 2, message naming the socket.
timeout "$WAIT" "$VMMCTL" -s "$TMP/absent.sock" query-status >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ $rc -eq 2 ] && grep -q "$TMP/absent.sock" "$TMP/err"; then
    pass "connection failure"
else
    fail "connection failure (exit $rc, expected 2)"; show_output
fi

# quit ends QEMU.
vmmctl quit
if [ $rc -ne 0 ]; then
    fail "quit (exit $rc)"; show_output
fi
for _ in $(seq $((WAIT * 10))); do
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$QEMU_PID" 2>/dev/null; then
    fail "QEMU still running $WAIT s after quit"
else
    wait "$QEMU_PID"
    qemu_status=$?
    QEMU_PID=
    if [ $qemu_status -eq 0 ]; then
        pass "quit ends QEMU"
    else
        fail "QEMU exited with status $qemu_status after quit"
    fi
fi

if [ $failures -ne 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all checks passed"
exit 0
