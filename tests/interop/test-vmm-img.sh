#!/usr/bin/env bash
# vmm-img against the real qemu-img 7.2, subcommand by subcommand, for raw and
# qcow2 (qcow2 when the block layer has the driver: vmm-img --help lists it):
# every image vmm-img writes is checked by qemu-img (check clean, compare
# identical, info fields via jq), every output that qemu-img also prints is
# compared with qemu-img's on the same image (info, check, map, measure,
# compare, snapshot -l), and exit codes are compared for the same situations
# (check of a corrupted or leaking image, compare of different images).
#   VMM_BIN_DIR (vmm-img), VMM_IMG_FORMATS ("raw qcow2"), VMM_IMG_CASES (regex, all)
set -uo pipefail

VMM_IMG=${VMM_BIN_DIR:-}/vmm-img
FORMATS=${VMM_IMG_FORMATS:-raw qcow2}
CASE_FILTER=${VMM_IMG_CASES:-.}
TMO=60

skip() { echo "SKIP: $*"; exit 77; }
command -v qemu-img >/dev/null || skip "qemu-img not installed (qemu-utils)"
command -v qemu-io >/dev/null || skip "qemu-io not installed (qemu-utils)"
command -v jq >/dev/null || skip "jq not installed"
command -v python3 >/dev/null || skip "python3 not installed"
[ -x "$VMM_IMG" ] || skip "vmm-img not built ($VMM_IMG)"

T=$(mktemp -d "${TMPDIR:-/tmp}/test-vmm-img.XXXXXX")
trap 'rm -rf "$T"' EXIT
cd "$T" || exit 1

passed=0 failed=0
ok() { echo "ok   $*"; passed=$((passed + 1)); }
fail() { echo "FAIL $*"; failed=$((failed + 1)); }
# vi: vmm-img with a time bound; a crash (signal) is always a failure.
vi() {
    timeout "$TMO" "$VMM_IMG" "$@"
    local rc=$?
    if [ $rc -ge 124 ]; then
        echo "vmm-img $* ended with status $rc (timeout or signal)" >&2
    fi
    return $rc
}
qi() { timeout "$TMO" qemu-img "$@"; }
qio() { timeout "$TMO" qemu-io "$@" >/dev/null; }
expect() { # NAME EXPECTED ACTUAL
    if [ "$2" == "$3" ]; then ok "$1"; else fail "$1: expected '$2', got '$3'"; fi
}
same_output() { # NAME FILE_OURS FILE_QEMU
    if diff -u "$3" "$2" >"$T/diff.txt"; then ok "$1"; else fail "$1"; cat "$T/diff.txt"; fi
}
qemu_clean() { # NAME IMAGE FMT
    local out rc
    out=$(qi check -f "$3" "$2" 2>&1); rc=$?
    if [ $rc -eq 0 ]; then ok "$1: qemu-img check clean"; else fail "$1: qemu-img check ($rc): $out"; fi
}
qemu_same() { # NAME A FMT_A B FMT_B
    local out rc
    out=$(qi compare -f "$3" -F "$5" "$2" "$4" 2>&1); rc=$?
    if [ $rc -eq 0 ]; then ok "$1: qemu-img compare identical"; else fail "$1: qemu-img compare ($rc): $out"; fi
}
want() { [[ "$1" =~ $CASE_FILTER ]]; }
supported() { "$VMM_IMG" --help | grep -q "^Supported formats:.* $1\b"; }

# Seeded patterns: a few regions of different bytes, some zero, in an image of SIZE.
fill() { # IMAGE FMT
    qio -f "$2" -c "write -P 0x5a 0 192k" -c "write -P 0xa5 1M 64k" -c "write -z 2M 128k" \
        -c "write -P 0x11 3M 4k" -c "write -P 0x22 5000k 8k" "$1"
}

# ---------------------------------------------------------------- per format

test_create_info() { # FMT
    local f=$1 opts=""
    want create || return 0
    vi create -f "$f" -q c.$f 64M || fail "$f create"
    qi create -f "$f" -q q.$f 64M
    for key in virtual-size format cluster-size dirty-flag format-specific backing-filename; do
        expect "$f create: qemu-img info $key" "$(qi info --output=json q.$f | jq -c ".\"$key\"")" \
            "$(qi info --output=json c.$f | jq -c ".\"$key\"")"
    done
    [ "$f" = qcow2 ] && qemu_clean "$f create" c.$f $f
    # sizes with suffixes and -o size=
    vi create -q -f "$f" -o size=1.5M s.$f && expect "$f create -o size=1.5M" 1572864 \
        "$(qi info --output=json s.$f | jq '."virtual-size"')"
    vi create -q -f "$f" s2.$f 3G && expect "$f create 3G" 3221225472 \
        "$(qi info --output=json s2.$f | jq '."virtual-size"')"
    vi create -q -f "$f" s3.$f 1xyz 2>/dev/null; expect "$f create bad size exit" 1 $?
    # "Formatting ..." line as qemu-img's
    vi create -f "$f" fm.$f 1M >fm-ours.txt; qi create -f "$f" fm.$f 1M >fm-qemu.txt
    sed -i 's/ [a-z_.]*=[^ ]*//g' fm-ours.txt fm-qemu.txt  # option order may differ: compare the head
    same_output "$f create: Formatting line" fm-ours.txt fm-qemu.txt
    # -o help: every option qemu-img lists is ours too
    qi create -f "$f" -o help | sed -n 's/^  \([a-z_.-]*\)=.*/\1/p' | sort >help-qemu.txt
    vi create -f "$f" -o help | sed -n 's/^  \([a-z_.-]*\)=.*/\1/p' | sort >help-ours.txt
    local missing
    missing=$(comm -23 help-qemu.txt help-ours.txt | grep -v '^encrypt' | tr '\n' ' ')
    expect "$f create -o help lists qemu-img's options" "" "$missing"
    vi create -f "$f" -o help | grep -q '^  size=<size> *- ' && ok "$f -o help format" ||
        fail "$f -o help format"

    # info of an image qemu-img made and qemu-io filled: JSON and human output as qemu-img's
    qi create -q -f "$f" i.$f 8M && fill i.$f $f
    vi info --output=json i.$f | jq -S . >info-ours.json
    qi info --output=json i.$f | jq -S . >info-qemu.json
    same_output "$f info --output=json" info-ours.json info-qemu.json
    vi info i.$f >info-ours.txt; qi info i.$f >info-qemu.txt
    same_output "$f info (human)" info-ours.txt info-qemu.txt
    vi info nonexistent.$f 2>err.txt; expect "$f info of a missing file: exit" 1 $?
    grep -q '^vmm-img: .*nonexistent' err.txt && ok "$f info error names the file" ||
        fail "$f info error: $(cat err.txt)"
}

test_check() { # FMT
    local f=$1 rc_ours rc_qemu
    want check || return 0
    qi create -q -f "$f" k.$f 8M && fill k.$f $f
    vi check k.$f >chk-ours.txt 2>&1; rc_ours=$?
    qi check k.$f >chk-qemu.txt 2>&1; rc_qemu=$?
    expect "$f check exit code" $rc_qemu $rc_ours
    sed -i 's/^qemu-img: /vmm-img: /' chk-qemu.txt
    same_output "$f check output" chk-ours.txt chk-qemu.txt
    if [ "$f" = qcow2 ]; then
        vi check --output=json k.$f | jq -S . >chk-ours.json
        qi check --output=json k.$f | jq -S . >chk-qemu.json
        same_output "$f check --output=json" chk-ours.json chk-qemu.json
        # a leaked cluster: exit 3 as qemu-img, then -r leaks makes it clean
        cp k.$f leak.$f && python3 "$T/qcow2poke.py" leak leak.$f
        vi check leak.$f >/dev/null 2>&1; rc_ours=$?
        qi check leak.$f >/dev/null 2>&1; rc_qemu=$?
        expect "$f check of a leaking image: exit (qemu-img $rc_qemu)" $rc_qemu $rc_ours
        vi check -r leaks leak.$f >/dev/null 2>&1; expect "$f check -r leaks" 0 $?
        qemu_clean "$f check -r leaks" leak.$f $f
        # a data cluster whose refcount is 0: corruption, exit 2 as qemu-img
        cp k.$f bad.$f && python3 "$T/qcow2poke.py" corrupt bad.$f
        vi check bad.$f >/dev/null 2>&1; rc_ours=$?
        qi check bad.$f >/dev/null 2>&1; rc_qemu=$?
        expect "$f check of a corrupted image: exit (qemu-img $rc_qemu)" $rc_qemu $rc_ours
        vi check -r all bad.$f >/dev/null 2>&1
        qemu_clean "$f check -r all" bad.$f $f
        # garbage and truncated headers: an error, never a crash
        head -c 100 k.$f >trunc.$f
        vi info trunc.$f >/dev/null 2>&1; rc_ours=$?
        expect "$f info of a truncated header: exit" 1 $rc_ours
        vi check trunc.$f >/dev/null 2>&1; rc_ours=$?
        [ $rc_ours -lt 64 ] && ok "$f check of a truncated header: no crash ($rc_ours)" ||
            fail "$f check of a truncated header: $rc_ours"
        cp k.$f l1.$f && python3 "$T/qcow2poke.py" l1-past-eof l1.$f
        vi convert -O raw l1.$f l1.raw >/dev/null 2>&1; rc_ours=$?
        [ $rc_ours -eq 1 ] && ok "$f convert with L1 past EOF: exit 1" ||
            fail "$f convert with L1 past EOF: $rc_ours"
    fi
}

test_convert() { # FMT
    local f=$1 o
    want convert || return 0
    qi create -q -f qcow2 src.qcow2 8M && fill src.qcow2 qcow2
    qi create -q -f raw src.raw 8M && fill src.raw raw
    for s in src.qcow2 src.raw; do
        supported "${s#src.}" || continue
        vi convert -O "$f" "$s" cv.$f || fail "$f convert $s"
        qemu_same "$f convert from $s" "$s" "${s#src.}" cv.$f $f
        [ "$f" = qcow2 ] && qemu_clean "$f convert from $s" cv.$f $f
        rm -f cv.$f
    done
    vi convert -f raw -O "$f" -S 0 src.raw full.$f && qemu_same "$f convert -S 0" src.raw raw full.$f $f
    vi convert -f raw -O "$f" -W -m 4 src.raw w.$f && qemu_same "$f convert -W -m 4" src.raw raw w.$f $f
    # the output of qemu-img's own convert to raw, byte for byte
    qi convert -O raw src.raw ref.raw
    vi convert -O raw w.$f back.raw && cmp -s ref.raw back.raw && ok "$f convert back to raw: same bytes" ||
        fail "$f convert back to raw"
    # -n into an existing image, --target-is-zero
    qi create -q -f "$f" n.$f 8M
    vi convert -n -O "$f" src.raw n.$f && qemu_same "$f convert -n" src.raw raw n.$f $f
    qi create -q -f "$f" z.$f 8M
    vi convert -n --target-is-zero -O "$f" src.raw z.$f && qemu_same "$f convert --target-is-zero" src.raw raw z.$f $f
    vi convert --target-is-zero -O "$f" src.raw zz.$f 2>/dev/null; expect "$f --target-is-zero without -n" 1 $?
    # two sources concatenated, as qemu-img
    vi convert -O "$f" src.raw src.raw cat.$f && qi convert -O raw src.raw src.raw cat-ref.raw &&
        qemu_same "$f convert of two sources" cat-ref.raw raw cat.$f $f
    # a sparse raw target stays sparse
    if [ "$f" = raw ]; then
        qi create -q -f raw big.raw 256M
        vi convert -O raw big.raw big2.raw; qi convert -O raw big.raw big3.raw
        expect "raw convert keeps holes (disk usage KiB as qemu-img's)" "$(du -k big3.raw | cut -f1)" \
            "$(du -k big2.raw | cut -f1)"
    fi
    if [ "$f" = qcow2 ]; then
        vi convert -c -O qcow2 src.raw comp.qcow2 && qemu_same "qcow2 convert -c" src.raw raw comp.qcow2 qcow2
        qemu_clean "qcow2 convert -c" comp.qcow2 qcow2
        qi map --output=json comp.qcow2 | grep -q '"data": true' && ok "convert -c wrote data" ||
            fail "convert -c wrote no data"
        qi convert -O raw comp.qcow2 comp-ref.raw && cmp -s comp-ref.raw ref.raw &&
            ok "qcow2 convert -c: qemu-img reads it back" || fail "qcow2 convert -c read back"
        vi convert -O qcow2 -o cluster_size=4096,lazy_refcounts=on src.raw opt.qcow2
        expect "qcow2 convert -o cluster_size" 4096 "$(qi info --output=json opt.qcow2 | jq '."cluster-size"')"
        qemu_same "qcow2 convert -o" src.raw raw opt.qcow2 qcow2
        # -B: only what differs from the backing file is written
        qi create -q -f qcow2 bb.qcow2 8M && qio -c "write -P 0x5a 0 192k" bb.qcow2
        vi convert -O qcow2 -B bb.qcow2 -F qcow2 src.raw ov.qcow2 2>err.txt || fail "convert -B: $(cat err.txt)"
        expect "convert -B: backing file" bb.qcow2 "$(qi info --output=json ov.qcow2 | jq -r '."backing-filename"')"
        qemu_same "qcow2 convert -B" src.raw raw ov.qcow2 qcow2
        vi convert -O qcow2 -B bb.qcow2 src.raw ov2.qcow2 2>/dev/null; expect "convert -B without -F" 1 $?
    fi
}

test_compare() { # FMT
    local f=$1 rc_ours rc_qemu
    want compare || return 0
    qi create -q -f "$f" a.$f 8M && fill a.$f $f
    cp a.$f b.$f
    qio -f "$f" -c "write -P 0x33 4100k 512" b.$f
    qi create -q -f "$f" short.$f 4M
    for pair in "a.$f a.$f" "a.$f b.$f" "a.$f short.$f"; do
        for strict in "" "-s"; do
            # shellcheck disable=SC2086
            vi compare $strict -f $f -F $f $pair >cmp-ours.txt 2>&1; rc_ours=$?
            # shellcheck disable=SC2086
            qi compare $strict -f $f -F $f $pair >cmp-qemu.txt 2>&1; rc_qemu=$?
            expect "$f compare $strict $pair: exit" $rc_qemu $rc_ours
            # strict mode's offset follows QEMU's host-file holes: not compared
            sed -i 's/Offset [0-9]* block status/Offset N block status/' cmp-ours.txt cmp-qemu.txt
            same_output "$f compare $strict $pair: output" cmp-ours.txt cmp-qemu.txt
        done
    done
    vi compare a.$f nonexistent.$f >/dev/null 2>&1; expect "$f compare with a missing image: exit" 2 $?
}

test_map() { # FMT
    local f=$1
    want map || return 0
    qi create -q -f "$f" m.$f 8M && fill m.$f $f
    for out in human json; do
        vi map --output=$out m.$f >map-ours.txt; qi map --output=$out m.$f >map-qemu.txt
        same_output "$f map --output=$out" map-ours.txt map-qemu.txt
    done
    vi map --output=json --start-offset=1M --max-length=2M m.$f >map-ours.txt
    qi map --output=json --start-offset=1M --max-length=2M m.$f >map-qemu.txt
    same_output "$f map --start-offset --max-length" map-ours.txt map-qemu.txt
    if [ "$f" = qcow2 ]; then
        qi create -q -f qcow2 -b m.qcow2 -F qcow2 mo.qcow2 && qio -c "write -P 0x77 64k 64k" mo.qcow2
        vi map --output=json mo.qcow2 >map-ours.txt; qi map --output=json mo.qcow2 >map-qemu.txt
        same_output "qcow2 map of an overlay (depth)" map-ours.txt map-qemu.txt
    fi
}

test_measure() { # FMT
    local f=$1
    want measure || return 0
    qi create -q -f qcow2 ms.qcow2 64M && fill ms.qcow2 qcow2
    for args in "--size 1G -O $f" "--size 1000000 -O $f" "-O $f ms.qcow2" "--output=json -O $f ms.qcow2" \
                "--output=json --size 5G -O $f"; do
        # shellcheck disable=SC2086
        vi measure $args >me-ours.txt 2>&1; qi measure $args >me-qemu.txt 2>&1
        if [ "$f" = raw ]; then sed -i '/bitmaps/d' me-qemu.txt me-ours.txt; fi
        jq -S . me-ours.txt >/dev/null 2>&1 && { jq -S . me-ours.txt >x && mv x me-ours.txt; jq -S . me-qemu.txt >x && mv x me-qemu.txt; }
        same_output "$f measure $args" me-ours.txt me-qemu.txt
    done
    if [ "$f" = qcow2 ]; then
        for o in cluster_size=4096 cluster_size=2M refcount_bits=1 extended_l2=on preallocation=full; do
            vi measure --size 10G -O qcow2 -o $o >me-ours.txt; qi measure --size 10G -O qcow2 -o $o >me-qemu.txt
            same_output "qcow2 measure -o $o" me-ours.txt me-qemu.txt
        done
    fi
}

test_resize() { # FMT
    local f=$1
    want resize || return 0
    qi create -q -f "$f" r.$f 8M && fill r.$f $f
    vi resize -f $f r.$f +8M >out.txt && grep -qx "Image resized." out.txt && ok "$f resize +8M" || fail "$f resize +8M"
    expect "$f resize +8M: size" 16777216 "$(qi info --output=json r.$f | jq '."virtual-size"')"
    qi convert -O raw r.$f r-before.raw
    vi resize -f $f r.$f -- -4M 2>/dev/null; expect "$f resize -4M without --shrink: exit" 1 $?
    vi resize -f $f -q --shrink r.$f 12M; expect "$f resize --shrink: exit" 0 $?
    expect "$f resize --shrink: size" 12582912 "$(qi info --output=json r.$f | jq '."virtual-size"')"
    truncate -s 12M r-before.raw
    qemu_same "$f resize keeps data" r-before.raw raw r.$f $f
    [ "$f" = qcow2 ] && qemu_clean "$f resize" r.$f $f
    vi resize -f $f -q --preallocation=full r.$f 13M && expect "$f resize --preallocation=full" 13631488 \
        "$(qi info --output=json r.$f | jq '."virtual-size"')"
}

test_dd() { # FMT
    local f=$1
    want dd || return 0
    qi create -q -f "$f" d.$f 8M && fill d.$f $f
    for args in "bs=64k" "bs=4k count=100" "bs=1M skip=2" "bs=512 count=20000 skip=5"; do
        # shellcheck disable=SC2086
        vi dd -f $f -O raw $args if=d.$f of=dd-ours.raw; qi dd -f $f -O raw $args if=d.$f of=dd-qemu.raw
        cmp -s dd-ours.raw dd-qemu.raw && ok "$f dd $args" || fail "$f dd $args"
    done
    vi dd -O "$f" bs=64k if=d.$f of=dd.$f && qemu_same "$f dd -O $f" d.$f $f dd.$f $f
    vi dd if=d.$f 2>/dev/null; expect "$f dd without of=" 1 $?
}

test_bench() { # FMT
    local f=$1
    want bench || return 0
    qi create -q -f "$f" be.$f 16M
    vi bench -f $f -c 2000 -d 1 be.$f >be.txt && head -1 be.txt | grep -qx \
        "Sending 2000 read requests, 4096 bytes each, 1 in parallel (starting at offset 0, step size 4096)" &&
        grep -q '^Run completed in [0-9.]* seconds.$' be.txt && ok "$f bench read" || fail "$f bench read: $(cat be.txt)"
    vi bench -f $f -w -c 1024 -d 16 -s 4096 --pattern=0x6b be.$f >be.txt || fail "$f bench -w -d 16"
    qio -f $f -c "read -P 0x6b 0 4M" be.$f && ok "$f bench -w: qemu-io reads the pattern" ||
        fail "$f bench -w pattern"
    vi bench -f $f -w -c 100 -d 4 -o 1M -S 8192 -s 512 --flush-interval=10 --pattern=7 be.$f >be.txt &&
        grep -q "Sending flush every 10 requests" be.txt && ok "$f bench --flush-interval" || fail "$f bench flush"
    [ "$f" = qcow2 ] && qemu_clean "$f bench -w" be.$f $f
}

# qcow2-only subcommands (raw has no snapshots, backing files or amendable options)
test_snapshot() {
    want snapshot || return 0
    qi create -q -f qcow2 sn.qcow2 8M && fill sn.qcow2 qcow2
    vi snapshot -c s1 sn.qcow2 || fail "snapshot -c"
    qi snapshot -l sn.qcow2 | awk 'NR>2{print $1, $2, $3 $4}' >sn-qemu.txt
    vi snapshot -l sn.qcow2 | awk 'NR>2{print $1, $2, $3 $4}' >sn-ours.txt
    expect "snapshot -c seen by qemu-img" "1 s1 0B" "$(cat sn-qemu.txt)"
    qi snapshot -l sn.qcow2 >sn-qemu.txt; vi snapshot -l sn.qcow2 >sn-ours.txt
    same_output "snapshot -l table" sn-ours.txt sn-qemu.txt
    qemu_clean "snapshot -c" sn.qcow2 qcow2
    qio -c "write -P 0x99 0 1M" sn.qcow2
    vi snapshot -a s1 sn.qcow2 || fail "snapshot -a"
    qio -c "read -P 0x5a 0 192k" sn.qcow2 && ok "snapshot -a restores the data" || fail "snapshot -a data"
    vi snapshot -a nosuch sn.qcow2 2>/dev/null; expect "snapshot -a of a missing snapshot" 1 $?
    vi snapshot -d s1 sn.qcow2 || fail "snapshot -d"
    expect "snapshot -d seen by qemu-img" "" "$(qi snapshot -l sn.qcow2)"
    qemu_clean "snapshot -d" sn.qcow2 qcow2
    qi snapshot -c q1 sn.qcow2
    vi info --output=json sn.qcow2 | jq -S .snapshots >sn-ours.json
    qi info --output=json sn.qcow2 | jq -S .snapshots >sn-qemu.json
    same_output "info snapshots of a qemu-img snapshot" sn-ours.json sn-qemu.json
    vi snapshot -l -c x sn.qcow2 2>/dev/null; expect "snapshot: -l with -c refused" 1 $?
}

test_amend() {
    want amend || return 0
    qi create -q -f qcow2 am.qcow2 8M && fill am.qcow2 qcow2
    vi amend -o lazy_refcounts=on am.qcow2 || fail "amend lazy_refcounts=on"
    expect "amend: lazy-refcounts" true "$(qi info --output=json am.qcow2 | jq '."format-specific".data."lazy-refcounts"')"
    vi amend -o compat=0.10,lazy_refcounts=off am.qcow2 || fail "amend compat=0.10"
    expect "amend: compat" '"0.10"' "$(qi info --output=json am.qcow2 | jq '."format-specific".data.compat')"
    qemu_clean amend am.qcow2 qcow2
    vi amend -o foo=1 am.qcow2 2>/dev/null; expect "amend -o foo=1 (invalid parameter)" 1 $?
    vi amend am.qcow2 2>/dev/null; expect "amend without -o" 1 $?
    qi create -q -f raw am.raw 1M
    vi amend -f raw -o size=2M am.raw 2>/dev/null; rc_ours=$?
    qi amend -f raw -o size=2M am.raw 2>/dev/null; expect "amend of raw: exit as qemu-img" $? $rc_ours
}

test_rebase() {
    want rebase || return 0
    qi create -q -f qcow2 b1.qcow2 8M && qio -c "write -P 0x01 0 1M" b1.qcow2
    qi create -q -f qcow2 b2.qcow2 8M && qio -c "write -P 0x02 512k 1M" b2.qcow2
    qi create -q -f qcow2 -b b1.qcow2 -F qcow2 ov.qcow2 && qio -c "write -P 0x03 768k 64k" ov.qcow2
    qi convert -O raw ov.qcow2 ov-before.raw
    vi rebase -b b2.qcow2 -F qcow2 ov.qcow2 || fail "rebase (safe)"
    expect "rebase: new backing" b2.qcow2 "$(qi info --output=json ov.qcow2 | jq -r '."backing-filename"')"
    qemu_same "rebase keeps the content" ov-before.raw raw ov.qcow2 qcow2
    qemu_clean rebase ov.qcow2 qcow2
    vi rebase -b b1.qcow2 ov.qcow2 2>/dev/null; expect "rebase without -F (as qemu-img 7.2)" 1 $?
    vi rebase -u -b b1.qcow2 -F qcow2 ov.qcow2 || fail "rebase -u"
    expect "rebase -u: new backing" b1.qcow2 "$(qi info --output=json ov.qcow2 | jq -r '."backing-filename"')"
    qi convert -O raw ov.qcow2 ov-before.raw
    vi rebase -b "" ov.qcow2 || fail 'rebase -b ""'
    expect 'rebase -b "": no backing' null "$(qi info --output=json ov.qcow2 | jq -r '."backing-filename"')"
    qemu_same 'rebase -b "" keeps the content' ov-before.raw raw ov.qcow2 qcow2
    qemu_clean 'rebase -b ""' ov.qcow2 qcow2
}

test_commit() {
    want commit || return 0
    qi create -q -f qcow2 cb.qcow2 8M && qio -c "write -P 0x01 0 2M" cb.qcow2
    qi create -q -f qcow2 -b cb.qcow2 -F qcow2 co.qcow2 && qio -c "write -P 0x04 1M 2M" -c "write -z 0 64k" co.qcow2
    qi convert -O raw co.qcow2 co-before.raw
    vi commit co.qcow2 >out.txt && grep -qx "Image committed." out.txt || fail "commit: $(cat out.txt)"
    qemu_same "commit: base has the overlay's content" co-before.raw raw cb.qcow2 qcow2
    qemu_same "commit: the overlay reads the same" co-before.raw raw co.qcow2 qcow2
    expect "commit: the overlay is empty" 0 \
        "$(qi map --output=json co.qcow2 | jq '[.[] | select(.depth == 0 and .present)] | length')"
    qemu_clean "commit (base)" cb.qcow2 qcow2
    qemu_clean "commit (overlay)" co.qcow2 qcow2
    # -d keeps the overlay; a three-level chain with -b commits into the bottom
    qi create -q -f qcow2 c0.qcow2 8M && qio -c "write -P 0x10 0 1M" c0.qcow2
    qi create -q -f qcow2 -b c0.qcow2 -F qcow2 c1.qcow2 && qio -c "write -P 0x11 1M 1M" c1.qcow2
    qi create -q -f qcow2 -b c1.qcow2 -F qcow2 c2.qcow2 && qio -c "write -P 0x12 2M 1M" c2.qcow2
    qi convert -O raw c2.qcow2 c2-before.raw
    vi commit -q -b c0.qcow2 c2.qcow2 || fail "commit -b"
    qemu_same "commit -b: bottom has everything" c2-before.raw raw c0.qcow2 qcow2
    expect "commit -b implies -d" 1 \
        "$(qi map --output=json c2.qcow2 | jq '[.[] | select(.depth == 0 and .present)] | length')"
    qio -c "write -P 0x13 4M 64k" c2.qcow2
    vi commit -q -d c2.qcow2 || fail "commit -d"
    expect "commit -d keeps the overlay" 2 \
        "$(qi map --output=json c2.qcow2 | jq '[.[] | select(.depth == 0 and .present)] | length')"
    qemu_clean "commit -d" c1.qcow2 qcow2
}

# A tiny qcow2 editor for the check tests: python, so that the layout is read
# from the header rather than assumed.
cat >"$T/qcow2poke.py" <<'EOF'
import struct, sys
mode, path = sys.argv[1], sys.argv[2]
with open(path, 'r+b') as f:
    h = f.read(104)
    cluster_bits = struct.unpack('>I', h[20:24])[0]
    cs = 1 << cluster_bits
    l1_off = struct.unpack('>Q', h[40:48])[0]
    rt_off = struct.unpack('>Q', h[48:56])[0]
    order = struct.unpack('>I', h[96:100])[0] if struct.unpack('>I', h[4:8])[0] >= 3 else 4
    assert order == 4, "only 16-bit refcounts"
    f.seek(rt_off); rb_off = struct.unpack('>Q', f.read(8))[0]
    def set_ref(cluster, value):
        f.seek(rb_off + 2 * cluster); f.write(struct.pack('>H', value))
    if mode == 'leak':
        f.seek(0, 2); end = f.tell()
        end = (end + cs - 1) // cs * cs
        f.truncate(end + cs)
        set_ref(end // cs, 1)
    elif mode == 'corrupt':
        f.seek(l1_off); l2 = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
        f.seek(l2); data = struct.unpack('>Q', f.read(8))[0] & 0x00fffffffffffe00
        set_ref(data // cs, 0)
    elif mode == 'l1-past-eof':
        f.seek(l1_off); f.write(struct.pack('>Q', (1 << 63) | (1 << 40)))
EOF

for f in $FORMATS; do
    if ! supported "$f"; then
        fail "$f: vmm-img does not list the $f driver (the block layer has not landed?)"
        continue
    fi
    test_create_info "$f"
    test_check "$f"
    test_convert "$f"
    test_compare "$f"
    test_map "$f"
    test_measure "$f"
    test_resize "$f"
    test_dd "$f"
    test_bench "$f"
    if [ "$f" = qcow2 ]; then
        test_snapshot
        test_amend
        test_rebase
        test_commit
    fi
done
# raw refuses what it cannot do, with qemu-img's exit codes
if [[ " $FORMATS " == *" raw "* ]] && want refuse; then
    qi create -q -f raw nr.raw 1M
    vi snapshot -c s nr.raw 2>/dev/null; rc_ours=$?; qi snapshot -c s nr.raw 2>/dev/null
    expect "raw snapshot -c refused as qemu-img" $? $rc_ours
    vi check -f raw nr.raw >/dev/null 2>&1; rc_ours=$?; qi check -f raw nr.raw >/dev/null 2>&1
    expect "raw check: exit as qemu-img" $? $rc_ours
    vi create -f raw -b nr.raw -F raw nb.raw 1M 2>/dev/null; expect "raw create -b refused" 1 $?
    vi --object foo,id=x info nr.raw 2>/dev/null; expect "unknown global option" 1 $?
    vi info --object memory-backend-ram,id=m nr.raw 2>err.txt; expect "--object of an unsupported type" 1 $?
    grep -q "not supported" err.txt && ok "--object message" || fail "--object message: $(cat err.txt)"
    vi info --object secret,id=s0,data=x nr.raw >/dev/null; expect "--object secret accepted" 0 $?
    vi info --image-opts driver=raw,file.filename=nr.raw >/dev/null; expect "--image-opts" 0 $?
    vi info -U nr.raw >/dev/null; expect "info -U" 0 $?
    vi nosuchcommand 2>/dev/null; expect "unknown command" 1 $?
fi

echo "passed $passed, failed $failed"
[ "$failed" -eq 0 ]
