#!/bin/bash
# probe-host-kvm.sh [--kit DIR] [--no-cache]
#
# Answers whether this host's own /dev/kvm can boot a Linux guest: boots the kit
# kernel with the L2 initramfs under `qemu-system-x86_64 -enable-kvm -M microvm`
# and looks for its marker, bounded to 30 s. Some hosts expose a /dev/kvm that
# runs tiny guests but not Linux (a software nested hypervisor), so the
# existence of /dev/kvm alone proves nothing.
#
# Prints "yes" or "no"; exit 0 for yes, 1 for no. The answer is cached per boot
# (keyed on /proc/sys/kernel/random/boot_id) in the kit cache directory.
set -uo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$RIG_DIR/rig-lib.sh"

KIT=""
USE_CACHE=1
PROBE_TIMEOUT=${VMM_RIG_PROBE_TIMEOUT:-30}
while [ $# -gt 0 ]; do
    case "$1" in
        --kit) KIT=$2; shift 2 ;;
        --no-cache) USE_CACHE=0; shift ;;
        *) echo "probe-host-kvm: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

answer() {
    echo "$1"
    [ "$1" = yes ]
    exit
}

[ -r /dev/kvm ] && [ -w /dev/kvm ] || answer no
command -v "$RIG_QEMU" >/dev/null || answer no
[ -n "$KIT" ] || KIT=$(bash "$RIG_DIR/build-kit.sh" --quiet) || answer no

BOOT_ID=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)
CACHE_FILE="$(dirname "$KIT")/host-kvm.$BOOT_ID"
if [ "$USE_CACHE" = 1 ] && [ -f "$CACHE_FILE" ]; then
    answer "$(cat "$CACHE_FILE")"
fi

OUT=$(mktemp "${TMPDIR:-/tmp}/vmm-rig-probe.XXXXXX")
trap 'rm -f "$OUT"' EXIT
# timeout(1) kills exactly the QEMU it started. The subshell keeps bash's
# "Aborted" notice (QEMU aborts on some broken KVMs) out of our stderr.
(timeout -s KILL "$PROBE_TIMEOUT" "$RIG_QEMU" -enable-kvm -M microvm -cpu host -m 256 \
    -nodefaults -no-user-config -display none -no-reboot -serial stdio \
    -kernel "$(rig_kit_var "$KIT" RIG_KERNEL)" -initrd "$KIT/initramfs-l2.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet" < /dev/null > "$OUT" 2>&1; true) 2>/dev/null
if grep -q VMM-L2-MARKER "$OUT"; then
    result=yes
else
    result=no
fi
# Several ctest runs may probe at once; the rename keeps the cache file whole.
echo "$result" > "$CACHE_FILE.$$" && mv "$CACHE_FILE.$$" "$CACHE_FILE"
find "$(dirname "$CACHE_FILE")" -maxdepth 1 -name 'host-kvm.*' ! -name "host-kvm.$BOOT_ID*" -delete 2>/dev/null
answer "$result"
