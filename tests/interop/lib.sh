# Shared by the interop scripts: skipping, a work directory whose background
# processes are killed (by pid) and removed on exit, and ok/not_ok counting.
#   . "$(dirname "$0")/lib.sh"; need_tools qemu-img nbdinfo; make_workdir NAME
skip() { echo "SKIP: $*"; exit 77; }

need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || skip "$tool is not installed"
    done
}

# Background processes to kill on exit: add their pids with PIDS+=(...).
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$T"
}

# Sets T to a fresh directory that the EXIT trap removes.
make_workdir() {
    T=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap cleanup EXIT
}

PASS=0
FAIL=0
ok() { echo "ok - $*"; PASS=$((PASS + 1)); }
not_ok() { echo "not ok - $*"; FAIL=$((FAIL + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}
