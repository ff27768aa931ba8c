#!/usr/bin/env bash
# Images that qemu-img makes, with each qcow2 option, filled by qemu-io with
# seeded random patterns, must
#   1. read back through vmm-img exactly as through qemu-img (convert -O raw,
#      then cmp), and vmm-img compare must agree with qemu-img's raw copy;
#   2. take writes through our block layer (crash-writer --count: writes and
#      write-zeroes over existing, compressed, backing and snapshot-shared
#      clusters), after which qemu-img check is clean and qemu-img compare
#      finds exactly the content the requests define; a second run adds
#      discards (no backing) and must still check clean and verify;
#      A lazy_refcounts image that qemu-io left dirty (abort) must read back,
#      and be repaired when we open it read-write;
#   3. take a whole-image write through vmm-img (convert -n of a patterned raw
#      file), after which qemu-img check is clean and qemu-img compare agrees.
# Internal snapshots must keep their list and their content through 2 and 3;
# a data_file_raw data file must stay a valid raw image of the content.
#   VMM_BIN_DIR (vmm-img), CRASH_WRITER, VMM_INTEROP_SEED (1), VMM_INTEROP_CASES (all; a regex)
set -uo pipefail

SEED=${VMM_INTEROP_SEED:-1}
SIZE=$((64 << 20))
VMM_IMG=${VMM_BIN_DIR:-}/vmm-img
CW=${CRASH_WRITER:-${VMM_BIN_DIR:-}/../tests/interop/crash-writer}
CASE_FILTER=${VMM_INTEROP_CASES:-.}

skip() { echo "SKIP: $*"; exit 77; }
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io not installed (qemu-utils)"
command -v jq >/dev/null || skip "jq not installed"
missing=()
[ -x "$VMM_IMG" ] || missing+=("vmm-img not built ($VMM_IMG)")
[ -x "$CW" ] || missing+=("crash-writer not built ($CW): the block layer has not landed")
[ ${#missing[@]} = 2 ] && skip "${missing[*]}"

T=$(mktemp -d "${TMPDIR:-/tmp}/test-images-from-qemu.XXXXXX")
trap 'rm -rf "$T"' EXIT

passed=0 failed=0 skipped=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skipped_step() { echo "skip $*"; skipped=$((skipped + 1)); }

# Seeded incompressible data for qemu-io "write -s".
random_file() { # SEED BYTES OUT
    if command -v openssl >/dev/null; then
        openssl enc -aes-128-ctr -nosalt -K "$(printf '%032x' "$1")" -iv 0 </dev/zero 2>/dev/null |
            head -c "$2" >"$3"
    else
        head -c "$2" /dev/urandom >"$3"
    fi
}
for i in 0 1 2 3; do random_file $((SEED * 10 + i)) $((256 << 10)) "$T/random$i"; done

# Fills IMAGE (FORMAT) with N seeded qemu-io writes: byte patterns, random data,
# zero writes (some unmapping), a few at unaligned offsets and lengths.
fill() { # IMAGE FORMAT SEED [N]
    local img=$1 fmt=$2 n=${4:-150} cmds=() i off len kind
    RANDOM=$3
    for ((i = 0; i < n; i++)); do
        len=$(( (1 + RANDOM % 512) * 512 ))
        off=$(( (RANDOM * 32768 + RANDOM) % ((SIZE - len) / 512) * 512 ))
        kind=$((RANDOM % 20))
        if [ "$kind" = 0 ]; then # unaligned
            off=$((off + 1 + RANDOM % 511)); len=$((len - 512 + 1 + RANDOM % 511))
            [ $((off + len)) -gt "$SIZE" ] && len=$((SIZE - off))
        fi
        if [ "$kind" -lt 13 ]; then
            cmds+=(-c "write -q -P $((1 + RANDOM % 255)) $off $len")
        elif [ "$kind" -lt 17 ]; then
            [ "$len" -gt $((256 << 10)) ] && len=$((256 << 10))
            cmds+=(-c "write -q -s $T/random$((RANDOM % 4)) $off $len")
        elif [ "$kind" -lt 19 ]; then
            cmds+=(-c "write -q -z $off $len")
        else
            cmds+=(-c "write -q -z -u $off $len")
        fi
    done
    qemu-io -f "$fmt" "${cmds[@]}" "$img"
}

# ---- the images: each maker runs in its case directory and leaves img.qcow2 ----

make_plain() { # OPTIONS
    qemu-img create -q -f qcow2 ${1:+-o "$1"} img.qcow2 "$SIZE" && fill img.qcow2 qcow2 "$SEED"
}
make_dirty() { # lazy_refcounts=on, and qemu-io aborts after writing: the image stays dirty
    make_plain lazy_refcounts=on &&
        (ulimit -c 0; qemu-io -f qcow2 -c "write -q -P 3 0 1M" -c "write -q -s $T/random1 $((8 << 20)) 64k" \
            -c abort img.qcow2 2>/dev/null; true) &&
        [ "$(qemu-img info -U --output=json img.qcow2 | jq -r '."dirty-flag"')" = true ]
}
make_compressed() { # zlib|zstd
    qemu-img create -q -f qcow2 src.qcow2 "$SIZE" && fill src.qcow2 qcow2 "$SEED" 200 &&
        qemu-img convert -c -O qcow2 -o "compression_type=$1" src.qcow2 img.qcow2 &&
        rm -f src.qcow2 &&
        fill img.qcow2 qcow2 $((SEED + 1)) 40 # uncompressed clusters among the compressed ones
}
make_data_file() { # extra options
    qemu-img create -q -f qcow2 -o "data_file=img.data${1:+,$1}" img.qcow2 "$SIZE" &&
        fill img.qcow2 qcow2 "$SEED"
}
make_chain() { # BASE-FORMAT: base <- mid <- img.qcow2, each layer written, cluster sizes differ
    local bf=$1
    if [ "$bf" = raw ]; then
        qemu-img create -q -f raw base.raw "$SIZE" && fill base.raw raw "$SEED" || return 1
    else
        qemu-img create -q -f qcow2 -o cluster_size=4096 base.qcow2 "$SIZE" && fill base.qcow2 qcow2 "$SEED" ||
            return 1
    fi
    qemu-img create -q -f qcow2 -o cluster_size=65536 -b "base.$bf" -F "$bf" mid.qcow2 &&
        fill mid.qcow2 qcow2 $((SEED + 1)) &&
        qemu-img create -q -f qcow2 -o cluster_size=16384 -b mid.qcow2 -F qcow2 img.qcow2 &&
        fill img.qcow2 qcow2 $((SEED + 2)) 80
}
make_snapshots() {
    qemu-img create -q -f qcow2 img.qcow2 "$SIZE" && fill img.qcow2 qcow2 "$SEED" &&
        qemu-img snapshot -c s1 img.qcow2 && fill img.qcow2 qcow2 $((SEED + 1)) 60 &&
        qemu-img snapshot -c s2 img.qcow2 && fill img.qcow2 qcow2 $((SEED + 2)) 60
}

CASES=(
    "cluster-512|make_plain cluster_size=512"
    "cluster-4k|make_plain cluster_size=4096"
    "cluster-64k|make_plain cluster_size=65536"
    "cluster-2M|make_plain cluster_size=2097152"
    "refcount-1|make_plain refcount_bits=1"
    "refcount-2|make_plain refcount_bits=2"
    "refcount-4|make_plain refcount_bits=4"
    "refcount-8|make_plain refcount_bits=8"
    "refcount-16|make_plain refcount_bits=16"
    "refcount-32|make_plain refcount_bits=32"
    "refcount-64|make_plain refcount_bits=64"
    "compat-0.10|make_plain compat=0.10"
    "compat-0.10-cluster-4k|make_plain compat=0.10,cluster_size=4096"
    "lazy-refcounts|make_plain lazy_refcounts=on"
    "lazy-refcounts-dirty|make_dirty"
    "extended-l2|make_plain extended_l2=on"
    "extended-l2-cluster-2M|make_plain extended_l2=on,cluster_size=2097152"
    "prealloc-metadata|make_plain preallocation=metadata"
    "prealloc-full|make_plain preallocation=full"
    "compressed-zlib|make_compressed zlib"
    "compressed-zstd|make_compressed zstd"
    "data-file|make_data_file"
    "data-file-raw|make_data_file data_file_raw=on"
    "chain-depth-3|make_chain qcow2"
    "chain-depth-3-raw-base|make_chain raw"
    "snapshots|make_snapshots"
)

# The snapshot list (without dates) and each snapshot's content.
snapshot_state() {
    local names
    names=$(qemu-img snapshot -U -l img.qcow2 | awk 'NR > 2 { print $1, $2, $3 }')
    echo "$names"
    for s in $(echo "$names" | awk '{ print $2 }'); do
        qemu-img convert -U -l "snapshot.name=$s" -O raw img.qcow2 snap.raw && sha256sum <snap.raw
        rm -f snap.raw
    done
}

check_clean() { # WHAT: qemu-img check must find nothing at all
    local out rc
    out=$(qemu-img check img.qcow2 2>&1); rc=$?
    if [ "$rc" = 0 ]; then ok "$1: qemu-img check clean"; else fail "$1: qemu-img check exit $rc: $out"; fi
}

compare_with() { # WHAT RAW: qemu-img compare must find the image identical to RAW
    local out rc
    out=$(qemu-img compare -f raw -F qcow2 "$2" img.qcow2 2>&1); rc=$?
    if [ "$rc" = 0 ]; then ok "$1: qemu-img compare identical"; else fail "$1: qemu-img compare exit $rc: $out"; fi
}

run_case() { # NAME MAKER...
    local name=$1; shift
    local dir="$T/$name" has_backing=no snaps=
    mkdir -p "$dir" && cd "$dir" || return
    if ! "$@" >make.log 2>&1; then fail "$name: making the image with qemu-img/qemu-io: $(cat make.log)"; return; fi
    [ -n "$(qemu-img info -U --output=json img.qcow2 | jq -r '."backing-filename" // empty')" ] && has_backing=yes
    [ "$name" = snapshots ] && snaps=$(snapshot_state)
    qemu-img convert -U -f qcow2 -O raw img.qcow2 theirs.raw || { fail "$name: qemu-img convert"; return; }

    # 1. reading
    if [ -x "$VMM_IMG" ]; then
        if out=$("$VMM_IMG" convert -f qcow2 -O raw img.qcow2 ours.raw 2>&1) && cmp -s ours.raw theirs.raw; then
            ok "$name: vmm-img convert -O raw equals qemu-img's ($(sha256sum <ours.raw | cut -c1-16))"
        else
            fail "$name: vmm-img convert -O raw differs from qemu-img's: $out $(cmp ours.raw theirs.raw 2>&1 | head -1)"
        fi
        out=$("$VMM_IMG" compare -f raw -F qcow2 theirs.raw img.qcow2 2>&1); rc=$?
        [ "$rc" = 0 ] && ok "$name: vmm-img compare with qemu-img's raw copy: identical" ||
            fail "$name: vmm-img compare exit $rc: $out"
        rm -f ours.raw
    else
        skipped_step "$name: reading through vmm-img (vmm-img not built)"
    fi

    # 2. writing through the block layer
    if [ -x "$CW" ]; then
        if out=$("$CW" --count 150 --no-discard img.qcow2 qcow2 "$SEED" cw.log 2>&1) &&
           out=$("$CW" --verify --no-discard --base theirs.raw --dump-expected expected.raw img.qcow2 qcow2 "$SEED" \
                 cw.log 2>&1); then
            ok "$name: 150 requests through our block layer verified (our reads and qemu-img's)"
            check_clean "$name: after our writes"
            compare_with "$name: after our writes" expected.raw
            if [ "$name" = data-file-raw ]; then
                cmp -s -n "$SIZE" img.data expected.raw && ok "$name: the raw data file holds the content" ||
                    fail "$name: data_file_raw=on but img.data differs from the content"
            fi
            if [ "$has_backing" = no ]; then
                if out=$("$CW" --count 100 img.qcow2 qcow2 $((SEED + 7)) cw2.log 2>&1) &&
                   out=$("$CW" --verify --base expected.raw img.qcow2 qcow2 $((SEED + 7)) cw2.log 2>&1); then
                    ok "$name: 100 more requests with discards verified"
                    check_clean "$name: after our discards"
                else
                    fail "$name: requests with discards: $out"
                fi
            fi
        else
            fail "$name: writes through our block layer: $out"
        fi
    else
        skipped_step "$name: writing through our block layer (crash-writer not built)"
    fi

    # 3. writing through vmm-img
    if [ -x "$VMM_IMG" ]; then
        qemu-img create -q -f raw pattern.raw "$SIZE" && fill pattern.raw raw $((SEED + 100)) 100
        if out=$("$VMM_IMG" convert -n -f raw -O qcow2 pattern.raw img.qcow2 2>&1); then
            ok "$name: vmm-img convert -n onto the image"
            check_clean "$name: after vmm-img convert -n"
            compare_with "$name: after vmm-img convert -n" pattern.raw
        else
            fail "$name: vmm-img convert -n: $out"
        fi
    else
        skipped_step "$name: writing through vmm-img (vmm-img not built)"
    fi

    if [ -n "$snaps" ]; then
        [ "$(snapshot_state)" = "$snaps" ] && ok "$name: snapshot list and contents unchanged" ||
            fail "$name: the snapshots changed: before: $snaps; after: $(snapshot_state)"
    fi
    cd "$T" && rm -rf "$dir"
}

start=$SECONDS
base_seed=$SEED
for i in "${!CASES[@]}"; do
    c=${CASES[$i]}
    name=${c%%|*}
    [[ $name =~ $CASE_FILTER ]] || continue
    read -r -a maker <<<"${c#*|}"
    SEED=$((base_seed * 100 + i))  # every case its own content
    run_case "$name" "${maker[@]}"
done
SEED=$base_seed
echo "images from qemu (seed $SEED): $passed passed, $failed failed, $skipped skipped in $((SECONDS - start)) s"
[ "$failed" = 0 ] || exit 1
if [ "$skipped" != 0 ]; then skip "${missing[*]}"; fi
exit 0
