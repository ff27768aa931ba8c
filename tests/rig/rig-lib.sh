# rig-lib.sh: shared helpers of rig-run.sh, rig-fixture.sh and rig-job.sh (bash).
# shellcheck shell=bash disable=SC2034
# Sourced, not run. Expects RIG_DIR to be set to this directory.

RIG_SRC_ROOT=$(cd "$RIG_DIR/../.." && pwd)
RIG_QEMU=${VMM_RIG_QEMU:-qemu-system-x86_64}
RIG_MEM=${VMM_RIG_MEM:-2048}
RIG_SMP=${VMM_RIG_SMP:-2}
# EPYC shows svm and npt to L1. The features TCG cannot emulate are switched off
# explicitly: TCG would drop them anyway, but warn about each one twice.
RIG_CPU=${VMM_RIG_CPU:-EPYC,+svm,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec}

# Exit codes shared by the scripts (documented in docs/rig.md).
RIG_EXIT_SKIP=77
RIG_EXIT_TIMEOUT=124
RIG_EXIT_L1_DOWN=125

rig_skip() { echo "rig: SKIP: $*" >&2; exit $RIG_EXIT_SKIP; }
rig_log() { echo "rig: $*" >&2; }

# POSIX single-quoting, readable by the guest's /bin/sh.
rig_quote() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

# rig_write_job DIR CWD TIMEOUT ENV_ARRAY_NAME -- CMD...
# Writes DIR/job.sh: cd, exports, exec. TIMEOUT 0 means none inside the guest.
rig_write_job() {
    local dir=$1 cwd=$2 timeout=$3 envname=$4 kv
    shift 5
    local -n envs=$envname
    mkdir -p "$dir"
    {
        echo "cd $(rig_quote "$cwd") || exit 126"
        for kv in "${envs[@]}"; do
            echo "export $(rig_quote "$kv")"
        done
        printf 'exec'
        for kv in "$@"; do
            printf ' %s' "$(rig_quote "$kv")"
        done
        printf '\n'
    } > "$dir/job.sh"
    echo "$timeout" > "$dir/timeout"
}

rig_check_qemu() {
    command -v "$RIG_QEMU" >/dev/null ||
        rig_skip "$RIG_QEMU not installed (apt-get install qemu-system-x86)"
}

# Prints the kit directory; exits 77 if build-kit.sh found a prerequisite missing.
rig_build_kit() {
    local kit rc=0
    kit=$(bash "$RIG_DIR/build-kit.sh" --quiet) || rc=$?
    [ $rc = 0 ] || { [ $rc = 77 ] && exit 77; rig_log "kit build failed"; exit 1; }
    echo "$kit"
}

# rig_write_config STATE MODE KIT SHARE...: the control files /init reads.
rig_write_config() {
    local state=$1 mode=$2 kit=$3 i=0 p
    shift 3
    {
        echo "RIG_MODE=$mode"
        echo "RIG_AGENT_MAX_IDLE=${VMM_RIG_AGENT_MAX_IDLE:-3600}"
    } > "$state/config"
    : > "$state/shares"
    for p in $(rig_normalize_shares "$kit" "$@"); do
        echo "share$i rw $p" >> "$state/shares"
        i=$((i + 1))
    done
}

# Canonical paths, parents first, nested duplicates dropped: a share under
# another share is visible through it already.
rig_normalize_shares() {
    local p last=""
    for p in "$@"; do
        [ -d "$p" ] && realpath "$p"
    done | LC_ALL=C sort -u | while read -r p; do
        if [ -n "$last" ] && [[ "$p/" == "$last/"* || "$last" == "/" ]]; then
            continue
        fi
        echo "$p"
        last=$p
    done
}

# rig_kit_var KIT NAME: a value from KIT/kit.env (written by build-kit.sh).
rig_kit_var() {
    (. "$1/kit.env" && eval "echo \"\$$2\"")
}

# rig_qemu_args STATE KIT: the L1 command line (in array RIG_QEMU_ARGS).
rig_qemu_args() {
    local state=$1 kit=$2 tag mode path
    RIG_QEMU_ARGS=("$RIG_QEMU" -accel tcg -M pc -cpu "$RIG_CPU" -smp "$RIG_SMP" -m "$RIG_MEM"
        -nodefaults -no-user-config -display none -no-reboot
        -kernel "$(rig_kit_var "$kit" RIG_KERNEL)" -initrd "$kit/initramfs-l1.cpio.gz"
        -append "console=ttyS0 panic=-1 quiet ${VMM_RIG_APPEND:-}"
        -serial "file:$state/console.log"
        -virtfs "local,path=$state,mount_tag=rig,security_model=none,multidevs=remap"
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
    # The monitor shows where L1's CPUs are when L1 hangs (rig_dump_l1); a
    # socket path must fit sun_path (108 bytes).
    local mon="$state/monitor.sock"
    [ ${#mon} -lt 100 ] && RIG_QEMU_ARGS+=(-monitor "unix:$mon,server=on,wait=off")
    local extra=()
    read -r -a extra <<< "${VMM_RIG_QEMU_EXTRA:-}" # split on blanks, on purpose
    RIG_QEMU_ARGS+=("${extra[@]}")
    while read -r tag mode path; do
        RIG_QEMU_ARGS+=(-virtfs "local,path=$path,mount_tag=$tag,security_model=none,multidevs=remap")
    done < "$state/shares"
}

# True while PID is the QEMU serving STATE (guards against PID reuse).
rig_qemu_alive() {
    local pid=$1 state=$2
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
        tr '\0' '\n' < "/proc/$pid/cmdline" | grep -qF "path=$state,mount_tag=rig"
}

# rig_dump_l1 STATE OUT: what L1's CPUs are doing (halted or where, registers,
# local APIC timers), from its QEMU monitor into OUT; prints each CPU's state
# in one line. For a hung L1, before it is ended: under TCG its hangs have
# come without a word from its kernel.
rig_dump_l1() {
    local sock=$1/monitor.sock out=$2 i
    [ -S "$sock" ] && command -v socat > /dev/null || return 0
    {
        printf 'info cpus\ninfo registers -a\n'
        for ((i = 0; i < RIG_SMP; i++)); do printf 'info lapic %d\n' "$i"; done
        # Each CPU's kernel stack: its return addresses name the functions
        # (L1's kernel has no KASLR under the rig's direct boot; match them
        # against L1's /proc/kallsyms).
        for ((i = 0; i < RIG_SMP; i++)); do printf 'cpu %d\nx/160gx $esp\n' "$i"; done
        sleep 2
    } | timeout 10 socat - "UNIX-CONNECT:$sock" > "$out" 2>&1
    tr -d '\r' < "$out" | awk '/^CPU#[0-9]+/ { cpu = $1 } /^RIP=/ && cpu { print "rig: L1 " cpu " " $1 " " $NF; cpu = "" }' >&2
    rig_log "L1's CPU registers and local APICs: $out"
}

# rig_stop_qemu PID STATE GRACE: waits GRACE s for QEMU to exit, then TERM,
# then KILL, and up to 5 s more for it to be gone.
rig_stop_qemu() {
    local pid=$1 state=$2 grace=$3 i
    for ((i = 0; i < grace * 5; i++)); do
        rig_qemu_alive "$pid" "$state" || return 0
        sleep 0.2
    done
    rig_log "QEMU $pid still running after ${grace}s, killing it"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 25; i++)); do
        rig_qemu_alive "$pid" "$state" || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
    for ((i = 0; i < 25; i++)); do
        rig_qemu_alive "$pid" "$state" || return 0
        sleep 0.2
    done
}

rig_console_tail() {
    local state=$1
    [ -f "$state/console.log" ] || return 0
    echo "---- L1 console (last 30 lines of $state/console.log) ----" >&2
    tail -n 30 "$state/console.log" | tr -d '\r' >&2
    echo "----" >&2
}
