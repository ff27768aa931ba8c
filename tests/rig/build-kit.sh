#!/bin/bash
# build-kit.sh [--cache DIR] [--kernel-version KVER] [--quiet]
#
# Builds the guest test rig's kit from Debian packages already on this host:
#   vmlinuz             the host's Debian kernel image (used for L1 and for L2)
#   initramfs-l1.cpio.gz busybox + modules + /init that mounts the host root over
#                        9p, chroots into it and runs a job (or a job agent loop)
#   initramfs-l2.cpio.gz busybox + L2 modules + /init that prints VMM-L2-MARKER and
#                        the CPU count, then powers off (or, asked on the kernel
#                        command line, waits for the ACPI power button or runs a shell)
#
# The kit is cached under DIR/kit-<kernel version>-<hash>, where the hash covers
# this script and the busybox binary, so a cached kit is reused only while nothing
# that went into it has changed. Prints the kit directory on stdout (last line).
# Exit status: 0 built or cached, 77 a prerequisite is missing, 1 build failure.
set -euo pipefail

RIG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_ROOT=$(cd "$RIG_DIR/../.." && pwd)
CACHE=${VMM_RIG_CACHE:-$SRC_ROOT/.rig-cache}
KVER=${VMM_RIG_KERNEL_VERSION:-}
QUIET=0

# L1 modules in the order they must be usable; dependencies are resolved from
# modules.dep. crc32c_generic has to come before ext4: jbd2 asks the crypto API
# for crc32c at mount time, which modules.dep cannot express.
L1_MODULES="virtio_pci virtio_blk virtio_net 9pnet_virtio 9pnet_fd 9p
            irqbypass ccp kvm kvm_amd nbd tun loop crc32c_generic ext4"

# L2 modules (the guest vmmd boots): the virtio-mmio devices of the microvm
# machine (disks, entropy, 9p shares), and the ACPI power button with its
# input device so that /init can
# power off on QMP system_powerdown.
L2_MODULES="virtio_mmio virtio_blk virtio_rng 9pnet_virtio 9p button evdev"

die() { echo "build-kit: $*" >&2; exit 1; }
skip() { echo "rig: SKIP: $*" >&2; exit 77; }
say() { [ "$QUIET" = 1 ] || echo "build-kit: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --cache) CACHE=$2; shift 2 ;;
        --kernel-version) KVER=$2; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done

# Newest Debian kernel that has both an image and its modules installed.
pick_kernel_version() {
    local img v best=""
    for img in /boot/vmlinuz-*; do
        [ -e "$img" ] || continue
        v=${img#/boot/vmlinuz-}
        [ -f "/lib/modules/$v/modules.dep" ] || continue
        best=$(printf '%s\n%s\n' "$best" "$v" | sed '/^$/d' | sort -V | tail -n1)
    done
    echo "$best"
}

check_prerequisites() {
    command -v busybox >/dev/null || skip "busybox not installed (apt-get install busybox-static)"
    busybox_is_static || skip "$(command -v busybox) is not statically linked (apt-get install busybox-static)"
    command -v cpio >/dev/null || skip "cpio not installed"
    command -v gzip >/dev/null || skip "gzip not installed"
    [ -n "$KVER" ] || KVER=$(pick_kernel_version)
    [ -n "$KVER" ] || skip "no kernel with modules found (/boot/vmlinuz-* + /lib/modules/*; apt-get install linux-image-amd64)"
    [ -r "/boot/vmlinuz-$KVER" ] || skip "kernel image /boot/vmlinuz-$KVER missing or unreadable"
    [ -f "/lib/modules/$KVER/modules.dep" ] || skip "/lib/modules/$KVER/modules.dep missing"
}

busybox_is_static() {
    # ldd prints "not a dynamic executable" for a static binary.
    ! ldd "$(command -v busybox)" >/dev/null 2>&1
}

# --- module resolver -------------------------------------------------------

declare -A MOD_PATH MOD_DEPS MOD_SEEN
MOD_ORDER=()

# Module names use '_' where file names may use '-' (kvm_amd is kvm-amd.ko).
mod_name_of() {
    local b=${1##*/}
    b=${b%%.ko*}
    echo "${b//-/_}"
}

# One awk pass: bash per-line parsing of ~4000 lines costs seconds.
load_modules_dep() {
    local name path deps
    while read -r name path deps; do
        MOD_PATH[$name]=$path
        MOD_DEPS[$name]=$deps
    done < <(awk -F': *' '
        function modname(p,  b) { b = p; sub(/.*\//, "", b); sub(/\.ko.*/, "", b); gsub(/-/, "_", b); return b }
        { n = split($2, d, " "); deps = ""
          for (i = 1; i <= n; i++) deps = deps " " modname(d[i])
          print modname($1), $1, deps }' "/lib/modules/$KVER/modules.dep")
}

# Depth-first: every dependency lands in MOD_ORDER before its user.
resolve_module() {
    local name=$1 d
    [ -n "${MOD_SEEN[$name]:-}" ] && return 0
    [ -n "${MOD_PATH[$name]:-}" ] || die "module '$name' not in /lib/modules/$KVER/modules.dep"
    MOD_SEEN[$name]=1
    for d in ${MOD_DEPS[$name]}; do
        resolve_module "$d"
    done
    MOD_ORDER+=("$name")
}

# busybox insmod cannot decompress, so compressed modules are unpacked here.
copy_module() {
    local name=$1 dest=$2 src="/lib/modules/$KVER/${MOD_PATH[$1]}"
    case "$src" in
        *.ko) cp "$src" "$dest/$name.ko" ;;
        *.ko.xz) xz -dc "$src" > "$dest/$name.ko" ;;
        *.ko.zst) zstd -qdc "$src" > "$dest/$name.ko" ;;
        *.ko.gz) gzip -dc "$src" > "$dest/$name.ko" ;;
        *) die "module '$name': unknown file type $src" ;;
    esac
}

# --- initramfs assembly ----------------------------------------------------

make_busybox_root() {
    local root=$1
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,etc,lib/modules}
    cp "$(command -v busybox)" "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    # The kernel opens /dev/console before /init runs; without the node init
    # would start with no stdio. Only root can mknod; /init copes either way.
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
}

pack_cpio() {
    local root=$1 out=$2
    (cd "$root" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc -R 0:0 --quiet) | gzip -6 -n > "$out"
}

# The guest side of the rig tests. The kernel command line picks what runs
# after the marker (Linux hands unknown "a=b" words to init's environment):
#   vmm_l2=poweroff        (default) power off at once
#   vmm_l2=wait-powerdown  busybox acpid powers off on the ACPI power button
#                          (QMP system_powerdown); gives up after 600 s
#   vmm_l2=shell           an interactive shell on the console; poweroff at exit
#   vmm_l2_cmd="CMD ARGS"  a shell command run before that (quoted for the kernel)
write_l2_init() {
    cat > "$1/init" <<'EOF'
#!/bin/sh
B=/bin/busybox
$B mount -t devtmpfs dev /dev 2>/dev/null
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
exec </dev/console >/dev/console 2>&1
for m in $($B cat /etc/l2-modules); do $B insmod /lib/modules/$m.ko 2>/dev/null; done
$B echo VMM-L2-MARKER
$B echo "VMM-L2-CPUS $($B grep -c ^processor /proc/cpuinfo)"
[ -n "${vmm_l2_cmd:-}" ] && $B sh -c "$vmm_l2_cmd"
case "${vmm_l2:-poweroff}" in
wait-powerdown)
    $B mkdir -p /etc/acpi/PWRF
    # acpid runs this detached from the console: say so on /dev/console.
    printf '#!/bin/sh\n/bin/busybox echo VMM-L2-POWERDOWN >/dev/console\n/bin/busybox poweroff -f\n' >/etc/acpi/PWRF/00000080
    $B chmod 755 /etc/acpi/PWRF/00000080
    $B acpid -c /etc/acpi -l /dev/null
    $B echo VMM-L2-WAITING
    $B sleep 600
    ;;
shell)
    $B --install -s /bin
    $B echo "VMM-L2-SHELL: busybox sh; 'exit' powers off"
    $B setsid $B cttyhack /bin/sh -l
    ;;
esac
$B poweroff -f
EOF
    chmod 755 "$1/init"
}

build_l2_initramfs() {
    local root=$1/l2root m
    make_busybox_root "$root"
    write_l2_init "$root"
    # The resolver's state is L1's until here: keep its order for kit.env.
    L1_ORDER=("${MOD_ORDER[@]}")
    MOD_ORDER=()
    MOD_SEEN=()
    for m in $L2_MODULES; do
        resolve_module "$m"
    done
    for m in "${MOD_ORDER[@]}"; do
        copy_module "$m" "$root/lib/modules"
    done
    printf '%s\n' "${MOD_ORDER[@]}" > "$root/etc/l2-modules"
    pack_cpio "$root" "$1/initramfs-l2.cpio.gz"
}

build_l1_initramfs() {
    local root=$1/l1root m
    make_busybox_root "$root"
    load_modules_dep
    for m in $L1_MODULES; do
        resolve_module "$m"
    done
    for m in "${MOD_ORDER[@]}"; do
        copy_module "$m" "$root/lib/modules"
    done
    printf '%s\n' "${MOD_ORDER[@]}" > "$root/etc/rig-modules"
    echo "$KVER" > "$root/etc/rig-kernel-version"
    install -m 755 "$RIG_DIR/l1-init.sh" "$root/init"
    pack_cpio "$root" "$1/initramfs-l1.cpio.gz"
}

# The bzImage decompresses itself inside the guest, which under TCG costs ~3 s
# per boot (twice when L2 boots the same kernel). Unpacking the ELF vmlinux
# here lets QEMU boot it directly through its PVH entry point (CONFIG_PVH).
extract_vmlinux() {
    local img=$1 out=$2 magic cmd off
    for magic in 'xz:\xfd7zXZ\x00' 'zstd:\x28\xb5\x2f\xfd' 'gzip:\x1f\x8b\x08'; do
        cmd=${magic%%:*}
        for off in $(LC_ALL=C grep -obUaP "${magic#*:}" "$img" | cut -d: -f1 | head -n 5); do
            case $cmd in
                xz) tail -c +$((off + 1)) "$img" | xz -dc --single-stream > "$out" 2>/dev/null ;;
                zstd) tail -c +$((off + 1)) "$img" | zstd -qdc > "$out" 2>/dev/null ;;
                gzip) tail -c +$((off + 1)) "$img" | gzip -dc > "$out" 2>/dev/null ;;
            esac
            if has_pvh_note "$out"; then
                return 0
            fi
        done
    done
    rm -f "$out"
    return 1
}

# XEN_ELFNOTE_PHYS32_ENTRY (type 18) is what QEMU needs to boot an ELF kernel.
has_pvh_note() {
    [ -s "$1" ] && [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] &&
        readelf -n "$1" 2>/dev/null | grep -q 'Unknown note type: (0x00000012)'
}

kit_hash() {
    { cat "${BASH_SOURCE[0]}" "$RIG_DIR/l1-init.sh" "$(command -v busybox)"
      stat -c "%s %Y" "/boot/vmlinuz-$KVER" "/lib/modules/$KVER/modules.dep"; } | sha256sum | cut -c1-12
}

main() {
    check_prerequisites
    local kit
    kit="$CACHE/kit-$KVER-$(kit_hash)"
    if [ -f "$kit/kit.env" ]; then
        say "cached: $kit"
        echo "$kit"
        return 0
    fi
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock -w 300 9 || die "timed out waiting for $CACHE/.lock"
    if [ ! -f "$kit/kit.env" ]; then
        local t0=$SECONDS tmp
        tmp=$(mktemp -d "$CACHE/.build.XXXXXX")
        trap 'rm -rf "$tmp"' EXIT
        say "building kit for kernel $KVER in $kit"
        cp "/boot/vmlinuz-$KVER" "$tmp/vmlinuz"
        local kernel=$kit/vmlinuz
        if command -v readelf >/dev/null && extract_vmlinux "$tmp/vmlinuz" "$tmp/vmlinux"; then
            kernel=$kit/vmlinux
        else
            say "no PVH-bootable vmlinux in the image; booting the bzImage (slower)"
        fi
        build_l1_initramfs "$tmp"
        build_l2_initramfs "$tmp"
        rm -rf "$tmp/l1root" "$tmp/l2root"
        cat > "$tmp/kit.env" <<EOF
RIG_KERNEL_VERSION=$KVER
RIG_KERNEL=$kernel
RIG_BZIMAGE=$kit/vmlinuz
RIG_INITRAMFS_L1=$kit/initramfs-l1.cpio.gz
RIG_INITRAMFS_L2=$kit/initramfs-l2.cpio.gz
RIG_L1_MODULES="${L1_ORDER[*]}"
EOF
        rm -rf "$kit"
        chmod 755 "$tmp"
        mv "$tmp" "$kit"
        trap - EXIT
        # Older kits of this kernel are dead weight once the new one exists.
        find "$CACHE" -maxdepth 1 -name "kit-$KVER-*" ! -path "$kit" -exec rm -rf {} + 2>/dev/null || true
        say "built in $((SECONDS - t0)) s"
    fi
    echo "$kit"
}

main
