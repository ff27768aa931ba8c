#!/bin/sh
# shellcheck disable=SC3043 # busybox ash has local
# /init of the rig's L1 guest (busybox). Copied into initramfs-l1 by build-kit.sh.
#
# Expects QEMU to export over virtio-9p:
#   rig       the per-run control directory (rw): config, shares, job dirs
#   hostroot  the host's / (read-only)
#   shareN    further host directories (listed in /rig/shares), mounted over
#             the same path inside the host root
# Then chroots into the host root and runs one job (RIG_MODE=run) or a loop that
# runs jobs dropped into /rig/queue (RIG_MODE=agent), and powers off.
/bin/busybox --install -s /bin
export PATH=/bin
umask 022

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
# vmmd's guest RAM is a memfd (shmem), which gets transparent huge pages only
# where the host allows them for a mapping that asks, as a host set up for
# VMs would (docs/kvm.md); QEMU's anonymous guest RAM gets them by default.
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null

log() { echo "rig-init: $*"; }

halt_now() {
    sync
    poweroff -f
    sleep 10 # poweroff -f does not return; if it did, panic=-1 and -no-reboot end QEMU
    exit 1
}

# Leaves a reason where the host looks for it, then stops the VM.
fail() {
    log "FATAL: $*"
    [ -d /rig ] && echo "$*" > /rig/l1-failed 2>/dev/null
    halt_now
}

# Options from the kernel command line (MODULE.PARAM=VALUE, e.g. VMM_RIG_APPEND=
# "kvm_amd.npt=0"), as modprobe would pass them: busybox's insmod does not.
module_options() {
    local name=${1//-/_} arg key
    for arg in $(cat /proc/cmdline); do
        key=${arg%%=*}
        key=${key//-/_}
        case $key in "$name".*) echo "${key#"$name".}${arg#"${arg%%=*}"}" ;; esac
    done
}

load_modules() {
    local m
    for m in $(cat /etc/rig-modules); do
        # shellcheck disable=SC2046 # one word per option
        insmod "/lib/modules/$m.ko" $(module_options "${m##*/}") 2>/tmp/insmod.err ||
            grep -q 'File exists' /tmp/insmod.err ||
            log "insmod $m: $(cat /tmp/insmod.err)"
    done
}

P9="trans=virtio,version=9p2000.L,msize=512000"

mount_host_root() {
    mkdir -p /rig /host
    mount -t 9p -o "$P9,cache=none" rig /rig || fail "cannot mount 9p tag 'rig'"
    [ -f /rig/config ] || fail "/rig/config missing"
    . /rig/config
    # The host root changes rarely during a run, so it may be cached hard.
    mount -t 9p -o "$P9,cache=loose,ro" hostroot /host || fail "cannot mount 9p tag 'hostroot'"
    mount -t tmpfs -o mode=1777 tmp /host/tmp || fail "cannot mount tmpfs on /host/tmp"
    mount -t tmpfs -o mode=755 run /host/run || log "no tmpfs on /host/run"
    # Shares are listed parent-first (sorted by the host), so nested ones land on top.
    local tag mode path
    while read -r tag mode path; do
        [ -n "$tag" ] || continue
        mkdir -p "/host$path" 2>/dev/null
        mount -t 9p -o "$P9,cache=mmap,$mode" "$tag" "/host$path" ||
            fail "cannot mount 9p tag '$tag' on $path"
    done < /rig/shares
    mount -t devtmpfs dev /host/dev || fail "cannot mount devtmpfs on /host/dev"
    mkdir -p /host/dev/pts /host/dev/shm
    mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
    mount -t tmpfs -o mode=1777 shm /host/dev/shm
    mount -t proc proc /host/proc || fail "cannot mount proc on /host/proc"
    mount -t sysfs sys /host/sys || fail "cannot mount sysfs on /host/sys"
    mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
    # Jobs read their script from, and write results to, the control directory.
    mkdir -p /host/tmp/.rig
    mount --bind /rig /host/tmp/.rig || fail "cannot bind /rig into the chroot"
}

# A VM with one vCPU that never runs, held for L1's lifetime. KVM flips static
# keys (jump labels) when the first VM or local APIC comes and the last one
# goes, and each flip rewrites L1's kernel text under a stop-the-world of its
# CPUs: six patch batches (50 sites) per L2 boot, counted with kprobes. TCG
# has been seen to freeze in the middle of one (docs/rig.md). With this VM
# always there the counts never reach zero and an L2 boot patches nothing.
start_kvm_keeper() {
    [ -e /host/dev/kvm ] && [ -x /host/usr/bin/python3 ] || { log "no KVM keeper"; return 0; }
    chroot /host /usr/bin/python3 -c '
import fcntl, os, signal
kvm = os.open("/dev/kvm", os.O_RDWR)
vm = fcntl.ioctl(kvm, 0xAE01, 0)  # KVM_CREATE_VM
fcntl.ioctl(vm, 0xAE60, 0)        # KVM_CREATE_IRQCHIP
fcntl.ioctl(vm, 0xAE41, 0)        # KVM_CREATE_VCPU 0
signal.pause()' < /dev/null > /dev/null 2> /tmp/kvm-keeper.err &
}

# run_job DIR: DIR (under /rig) holds job.sh and optionally timeout; receives
# output and rc. rc is written last, via rename, so the host never sees half of it.
run_job() {
    local dir=$1 t=0 rc
    [ -f "$dir/timeout" ] && t=$(cat "$dir/timeout")
    if [ "$t" -gt 0 ] 2>/dev/null; then
        set -- timeout -s KILL "$t"
    else
        set --
    fi
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root TERM=dumb LANG=C.UTF-8 RIG_MODE=l1 \
        "$@" chroot /host /bin/sh "/tmp/.rig/${dir#/rig/}/job.sh" \
        > "$dir/output" 2>&1 < /dev/null
    rc=$?
    echo "$rc" > "$dir/rc.tmp" && mv "$dir/rc.tmp" "$dir/rc"
    sync
}

# Jobs are directories renamed into /rig/queue/NAME.job by the host (atomic);
# each is moved to /rig/jobs/NAME and run in the background, so jobs of
# parallel ctest runs overlap.
agent_loop() {
    local idle=0 max_idle=${RIG_AGENT_MAX_IDLE:-3600} j name busy beat=0
    mkdir -p /rig/jobs
    echo ready > /rig/ready
    log "agent ready"
    while [ ! -e /rig/stop ]; do
        busy=0
        for j in /rig/queue/*.job; do
            [ -d "$j" ] || continue
            name=${j##*/}
            name=${name%.job}
            mv "$j" "/rig/jobs/$name" || continue
            log "job $name"
            run_job "/rig/jobs/$name" &
            busy=1
        done
        if [ $busy = 1 ]; then
            idle=0
        else
            idle=$((idle + 1))
        fi
        # A count that changes every ~2 s tells the host L1 still runs
        # (rig-job.sh ends an L1 that stops counting; docs/rig.md).
        beat=$((beat + 1))
        [ $((beat % 10)) = 0 ] && echo "$beat" > /rig/heartbeat
        # Poll every 0.2 s; an abandoned fixture powers itself off.
        [ $((idle / 5)) -lt "$max_idle" ] || { log "idle for $max_idle s, stopping"; break; }
        usleep 200000
    done
    log "agent stopping"
}

# For rig-run.sh: a count rewritten every ~2 s while the one job runs, as
# the agent loop does for rig-job.sh (docs/rig.md: a frozen L1 stops it).
start_heartbeat() {
    (
        beat=0
        while :; do
            beat=$((beat + 1))
            echo "$beat" > /rig/heartbeat
            sleep 2
        done
    ) &
}

main() {
    log "L1 up, kernel $(uname -r)"
    load_modules
    ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
    mount_host_root
    [ -e /dev/kvm ] || log "warning: no /dev/kvm (kvm_amd did not load?)"
    start_kvm_keeper
    echo "$(cut -d' ' -f1 /proc/uptime)" > /rig/booted
    case "${RIG_MODE:-run}" in
        run) start_heartbeat; run_job /rig/run ;;
        agent) agent_loop ;;
        *) fail "unknown RIG_MODE '$RIG_MODE'" ;;
    esac
    halt_now
}

main
