#!/usr/bin/env bash
# Images that vmm-img creates, with each option, must be what qemu-img creates:
#   1. qemu-img check is clean;
#   2. qemu-img info --output=json agrees on every field with an image that
#      qemu-img create makes with the same options (filename, actual-size and
#      full-backing-filename aside: they name other paths), and qemu-img map
#      agrees on what is allocated, zero and data (host layout aside);
#   3. after writes through our block layer (crash-writer --count) and
#      through vmm-img (convert -n of a patterned raw file), qemu-img check is
#      clean and qemu-img compare finds the image identical to the content
#      the writes define.
#   VMM_BIN_DIR (vmm-img), CRASH_WRITER, VMM_INTEROP_SEED (1), VMM_INTEROP_CASES (all; a regex)
set -uo pipefail

SEED=${VMM_INTEROP_SEED:-1}
VMM_IMG=${VMM_BIN_DIR:-}/vmm-img
CW=${CRASH_WRITER:-${VMM_BIN_DIR:-}/../tests/interop/crash-writer}
CASE_FILTER=${VMM_INTEROP_CASES:-.}
WRITE_MAX=$((256 << 20))     # larger images are only created and compared

skip() { echo "SKIP: $*"; exit 77; }
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io not installed (qemu-utils)"
command -v jq >/dev/null || skip "jq not installed"
[ -x "$VMM_IMG" ] || skip "vmm-img not built ($VMM_IMG)"
missing=
[ -x "$CW" ] || missing="crash-writer not built ($CW): the block layer has not landed"

T=$(mktemp -d "${TMPDIR:-/tmp}/test-images-to-qemu.XXXXXX")
trap 'rm -rf "$T"' EXIT

passed=0 failed=0 skipped=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
skipped_step() { echo "skip $*"; skipped=$((skipped + 1)); }

# NAME|FORMAT|SIZE|-o OPTIONS|BACKING (FORMAT:FILE, made by qemu-img in both directories)
CASES=(
    "qcow2-defaults|qcow2|64M||"
    "cluster-512|qcow2|64M|cluster_size=512|"
    "cluster-4k|qcow2|64M|cluster_size=4096|"
    "cluster-64k|qcow2|64M|cluster_size=65536|"
    "cluster-2M|qcow2|64M|cluster_size=2M|"
    "refcount-1|qcow2|64M|refcount_bits=1|"
    "refcount-2|qcow2|64M|refcount_bits=2|"
    "refcount-4|qcow2|64M|refcount_bits=4|"
    "refcount-8|qcow2|64M|refcount_bits=8|"
    "refcount-16|qcow2|64M|refcount_bits=16|"
    "refcount-32|qcow2|64M|refcount_bits=32|"
    "refcount-64|qcow2|64M|refcount_bits=64|"
    "compat-0.10|qcow2|64M|compat=0.10|"
    "compat-v2|qcow2|64M|compat=v2|"
    "compat-v3|qcow2|64M|compat=v3|"
    "lazy-refcounts|qcow2|64M|lazy_refcounts=on|"
    "extended-l2|qcow2|64M|extended_l2=on|"
    "extended-l2-cluster-16k|qcow2|64M|extended_l2=on,cluster_size=16k|"
    "compression-zstd|qcow2|64M|compression_type=zstd|"
    "prealloc-metadata|qcow2|64M|preallocation=metadata|"
    "prealloc-falloc|qcow2|64M|preallocation=falloc|"
    "prealloc-full|qcow2|64M|preallocation=full|"
    "prealloc-metadata-cluster-512|qcow2|16M|preallocation=metadata,cluster_size=512|"
    "data-file|qcow2|64M|data_file=img.data|"
    "data-file-raw|qcow2|64M|data_file=img.data,data_file_raw=on|"
    "backing-qcow2|qcow2|64M||qcow2:base.qcow2"
    "backing-raw|qcow2|64M|cluster_size=4096|raw:base.raw"
    "backing-compat-0.10|qcow2|64M|compat=0.10|qcow2:base.qcow2"
    "size-odd|qcow2|12345678k||"
    "size-1000-bytes|qcow2|1000||"
    "size-1T|qcow2|1T||"
    "size-4G-cluster-512|qcow2|4G|cluster_size=512|"
    "nocow|qcow2|64M|nocow=on|"
    "raw-defaults|raw|64M||"
    "raw-falloc|raw|64M|preallocation=falloc|"
    "raw-full|raw|64M|preallocation=full|"
)

# Options that qemu-img refuses: vmm-img must refuse them too. FORMAT|SIZE|OPTIONS
REFUSED=(
    "qcow2|64M|compat=0.10,lazy_refcounts=on"
    "qcow2|64M|cluster_size=3000"
    "qcow2|64M|cluster_size=256"
    "qcow2|64M|cluster_size=4M"
    "qcow2|64M|refcount_bits=3"
    "qcow2|64M|refcount_bits=128"
    "qcow2|64M|extended_l2=on,cluster_size=8k"
    "qcow2|64M|compat=0.10,extended_l2=on"
    "qcow2|64M|compat=0.10,compression_type=zstd"
    "qcow2|64M|compat=0.10,data_file=img.data"
    "qcow2|64M|data_file_raw=on"
    "qcow2|1T|cluster_size=512"
    "qcow2|64M|compat=0.9"
    "qcow2|64M|preallocation=bogus"
    "raw|64M|preallocation=metadata"
)

# qemu-img info without the fields that name other paths or measure the host.
info_json() { # FORMAT IMAGE
    qemu-img info -U -f "$1" --output=json "$2" | jq -S 'del(.filename, ."actual-size", ."full-backing-filename")'
}
# qemu-img map without host offsets, adjacent runs of the same kind merged.
# Whether an allocated cluster reads as zero comes from the host file (a hole
# or not), which depends on where metadata was placed: kept only for clusters
# without data (the zero flag, or unallocated).
map_json() { # FORMAT IMAGE
    qemu-img map -U -f "$1" --output=json "$2" | jq -c '
        map(del(.offset) | if .data then del(.zero) else . end) |
        reduce .[] as $e ([]; if length > 0 and (.[-1] | del(.start, .length)) == ($e | del(.start, .length))
                                 then .[-1].length += $e.length else . + [$e] end)'
}

# Fills RAW with N seeded qemu-io writes of byte patterns and zeroes.
fill_raw() { # RAW SEED N
    local cmds=() i off len size
    size=$(stat -c %s "$1")
    RANDOM=$2
    for ((i = 0; i < $3; i++)); do
        len=$(( (1 + RANDOM % 256) * 512 ))
        off=$(( (RANDOM * 32768 + RANDOM) % ((size - len) / 512) * 512 ))
        cmds+=(-c "write -q -P $((1 + RANDOM % 255)) $off $len")
    done
    qemu-io -f raw "${cmds[@]}" "$1"
}

create_both() { # FORMAT SIZE OPTIONS BACKING: a/img by vmm-img, b/img by qemu-img
    local fmt=$1 size=$2 opts=$3 backing=$4 bargs=() d
    if [ -n "$backing" ]; then
        for d in a b; do
            qemu-img create -q -f "${backing%%:*}" "$d/${backing#*:}" "$size" &&
                fill_raw_backing "$d/${backing#*:}" "${backing%%:*}" || return 1
        done
        bargs=(-b "${backing#*:}" -F "${backing%%:*}")
    fi
    (cd a && "$VMM_IMG" create -q -f "$fmt" "${bargs[@]}" ${opts:+-o "$opts"} "img.$fmt" "$size") \
        >a/create.log 2>&1 || { echo "vmm-img create: $(cat a/create.log)"; return 1; }
    (cd b && qemu-img create -q -f "$fmt" "${bargs[@]}" ${opts:+-o "$opts"} "img.$fmt" "$size") \
        >b/create.log 2>&1 || { echo "qemu-img create: $(cat b/create.log)"; return 1; }
}
fill_raw_backing() { # FILE FORMAT: identical content in both directories
    qemu-io -f "$2" -c "write -q -P 0x5a 0 1M" -c "write -q -P 0xa5 $((32 << 20)) 3M" "$1"
}

bytes_of() { # SIZE with qemu-img's suffixes
    local n=${1%[kKMGT]} mult=1
    case $1 in *k|*K) mult=1024 ;; *M) mult=$((1 << 20)) ;; *G) mult=$((1 << 30)) ;; *T) mult=$((1 << 40)) ;; esac
    echo $((n * mult))
}

run_writes() { # NAME FORMAT: on a/img.FORMAT
    local name=$1 fmt=$2 img="img.$2" out
    qemu-img convert -U -f "$fmt" -O raw "$img" before.raw || { fail "$name: qemu-img convert"; return; }
    if [ -x "$CW" ]; then
        if out=$("$CW" --count 150 --no-discard "$img" "$fmt" "$SEED" cw.log 2>&1) &&
           out=$("$CW" --verify --no-discard --base before.raw --dump-expected expected.raw "$img" "$fmt" "$SEED" \
                 cw.log 2>&1); then
            ok "$name: 150 requests through our block layer verified (our reads and qemu-img's)"
            check_clean "$name: after our writes" "$fmt"
            compare_with "$name: after our writes" "$fmt" expected.raw
            if [[ $name == data-file-raw ]]; then
                cmp -s -n "$(stat -c %s expected.raw)" img.data expected.raw &&
                    ok "$name: the raw data file holds the content" ||
                    fail "$name: data_file_raw=on but img.data differs from the content"
            fi
        else
            fail "$name: writes through our block layer: $out"
        fi
    else
        skipped_step "$name: writing through our block layer (crash-writer not built)"
    fi
    cp --sparse=always before.raw pattern.raw && fill_raw pattern.raw $((SEED + 100)) 100
    if out=$("$VMM_IMG" convert -n -f raw -O "$fmt" pattern.raw "$img" 2>&1); then
        ok "$name: vmm-img convert -n onto the image"
        check_clean "$name: after vmm-img convert -n" "$fmt"
        compare_with "$name: after vmm-img convert -n" "$fmt" pattern.raw
    else
        fail "$name: vmm-img convert -n: $out"
    fi
    rm -f before.raw expected.raw pattern.raw
}

check_clean() { # WHAT FORMAT
    [ "$2" = qcow2 ] || return 0   # raw has no metadata to check
    local out rc
    out=$(qemu-img check "img.$2" 2>&1); rc=$?
    if [ "$rc" = 0 ]; then ok "$1: qemu-img check clean"; else fail "$1: qemu-img check exit $rc: $out"; fi
}

compare_with() { # WHAT FORMAT RAW
    local out rc
    out=$(qemu-img compare -f raw -F "$2" "$3" "img.$2" 2>&1); rc=$?
    if [ "$rc" = 0 ]; then ok "$1: qemu-img compare identical"; else fail "$1: qemu-img compare exit $rc: $out"; fi
}

run_case() { # NAME FORMAT SIZE OPTIONS BACKING
    local name=$1 fmt=$2 size=$3 opts=$4 backing=$5 dir="$T/$1" out
    mkdir -p "$dir/a" "$dir/b" && cd "$dir" || return
    if ! out=$(create_both "$fmt" "$size" "$opts" "$backing" 2>&1); then
        fail "$name: create: $out"; cd "$T"; rm -rf "$dir"; return
    fi
    cd a
    check_clean "$name: new image" "$fmt"
    if diff <(info_json "$fmt" "img.$fmt") <(info_json "$fmt" "../b/img.$fmt") >../info.diff; then
        ok "$name: qemu-img info agrees with qemu-img create's image"
    else
        fail "$name: qemu-img info differs (< vmm-img create, > qemu-img create): $(cat ../info.diff)"
    fi
    if diff <(map_json "$fmt" "img.$fmt") <(map_json "$fmt" "../b/img.$fmt") >../map.diff; then
        ok "$name: qemu-img map agrees"
    else
        fail "$name: qemu-img map differs (< vmm-img create, > qemu-img create): $(head -c 2000 ../map.diff)"
    fi
    local ours theirs
    ours=$(stat -c %s "img.$fmt") theirs=$(stat -c %s "../b/img.$fmt")
    [ "$ours" = "$theirs" ] || echo "note $name: file length $ours, qemu-img's $theirs"
    if [ "$(bytes_of "$size")" -le "$WRITE_MAX" ]; then
        run_writes "$name" "$fmt"
    fi
    cd "$T" && rm -rf "$dir"
}

check_refused() { # FORMAT SIZE OPTIONS
    local out rc
    mkdir -p "$T/refused" && cd "$T/refused" || return
    qemu-img create -q -f "$1" ${3:+-o "$3"} theirs.img "$2" >/dev/null 2>&1; rc=$?
    if [ "$rc" = 0 ]; then
        echo "note: qemu-img now accepts -f $1 -o '$3' $2"
    elif out=$("$VMM_IMG" create -q -f "$1" ${3:+-o "$3"} ours.img "$2" 2>&1); then
        fail "refused options: vmm-img create -f $1 -o '$3' $2 succeeded, qemu-img refuses it"
    elif [ -z "$out" ]; then
        fail "refused options: vmm-img create -f $1 -o '$3' $2 failed without a message"
    else
        ok "refused options: vmm-img create -f $1 -o '$3' $2 refused: $out"
    fi
    cd "$T" && rm -rf "$T/refused"
}

start=$SECONDS
base_seed=$SEED
for i in "${!CASES[@]}"; do
    IFS='|' read -r name fmt size opts backing <<<"${CASES[$i]}"
    [[ $name =~ $CASE_FILTER ]] || continue
    SEED=$((base_seed * 100 + i))
    run_case "$name" "$fmt" "$size" "$opts" "$backing"
done
if [[ refused =~ $CASE_FILTER ]]; then
    for r in "${REFUSED[@]}"; do
        IFS='|' read -r fmt size opts <<<"$r"
        check_refused "$fmt" "$size" "$opts"
    done
fi
echo "images to qemu (seed $base_seed): $passed passed, $failed failed, $skipped skipped in $((SECONDS - start)) s"
[ "$failed" = 0 ] || exit 1
[ "$skipped" = 0 ] || skip "$missing"
exit 0
