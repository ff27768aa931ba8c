#!/usr/bin/env bash
# Our NBD client (blockd/nbd.c, driven by nbd-client-test) against the real
# servers: qemu-nbd 7.2 (raw and qcow2, Unix socket and TCP, TLS with X.509
# and PSK, qemu:allocation-depth) and nbdkit (memory and file plugins; the
# error, delay and blocksize-policy filters; no fixed newstyle; no structured
# replies). Data is compared byte for byte with what qemu-img, qemu-io, nbdcopy
# and nbdinfo see; block status with nbdinfo --map. Reconnect: the server is
# killed in the middle of I/O and restarted within reconnect-delay, and the
# I/O completes; without reconnect-delay the error names the server.
# Once vmm-img exists, `vmm-img info|convert|map nbd://...` too.
# Servers listen only on 127.0.0.1 and on sockets in a temporary directory.
# Environment: NBD_CLIENT_TEST (the driver program), VMM_BIN_DIR (vmm-img).
set -uo pipefail

CLIENT=${NBD_CLIENT_TEST:-${VMM_BIN_DIR:-}/../tests/interop/nbd-client-test}
VMM_IMG=${VMM_BIN_DIR:-}/vmm-img

. "$(dirname "$0")/lib.sh"
need_tools qemu-nbd qemu-img qemu-io nbdkit nbdinfo nbdcopy certtool psktool
[ -x "$CLIENT" ] || skip "nbd-client-test not built ($CLIENT)"
make_workdir test-nbd-client

client() { timeout 120 "$CLIENT" "$@"; }

# Starts a server in the background (its pid goes to PIDS and $LAST_PID)
# and waits until URI answers.
LAST_PID=
start_server() { # start_server URI COMMAND...
    local uri=$1; shift
    # nbdkit refuses a socket path that exists (a killed server leaves it).
    case $uri in *socket=*) rm -f "$(echo "$uri" | sed 's/.*socket=\([^&]*\).*/\1/')";; esac
    "$@" >"$T/server.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    local i sock=
    # libnbd 1.14 takes the PSK user name from getlogin_r, which fails without
    # a terminal: a PSK server is ready when its socket is.
    case $uri in *tls-psk-file=*) sock=$(echo "$uri" | sed 's/.*socket=\([^&]*\).*/\1/');; esac
    for i in $(seq 100); do
        if [ -n "$sock" ]; then
            if [ -S "$sock" ]; then sleep 0.2; return 0; fi
        elif timeout 5 nbdinfo --size "$uri" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$LAST_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    echo "server did not come up: $*"; tail -5 "$T/server.log"
    return 1
}
stop_server() { # stop_server PID
    kill -TERM "$1" 2>/dev/null
    local i
    for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nbdinfo --map and our map, as "offset length flags" with neighbours of equal
# flags merged (servers may split extents differently per request).
normalize_map() {
    awk '{ if (n && $3 == f && $1 == s + l) { l += $2 } else { if (n) print s, l, f; s = $1; l = $2; f = $3; n = 1 } }
         END { if (n) print s, l, f }'
}
same_map() { # same_map URI [client options...]
    local uri=$1; shift
    nbdinfo --map "$uri" | awk '{print $1, $2, $3}' | normalize_map >"$T/map.theirs" &&
        client "$@" "$uri" map | normalize_map >"$T/map.ours" &&
        diff "$T/map.theirs" "$T/map.ours"
}

head -c $((4 << 20)) /dev/urandom >"$T/pattern4m"
head -c 65536 /dev/urandom >"$T/pattern64k"

# ---------------------------------------------------------------- qemu-nbd, qcow2, Unix socket
qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
qemu-io -f qcow2 -c 'write -P 0xab 1M 2M' -c 'write -z 8M 1M' -c 'write -P 0x11 20M 64k' \
    "$T/a.qcow2" >/dev/null
qemu-img convert -f qcow2 -O raw "$T/a.qcow2" "$T/a.ref"
SOCK=$T/qemu.sock
URI="nbd+unix:///?socket=$SOCK"
if start_server "$URI" qemu-nbd -t -k "$SOCK" -f qcow2 "$T/a.qcow2"; then
    QPID=$LAST_PID
    check "qemu-nbd qcow2: size" test "$(client "$URI" info | sed -n 's/^size=//p')" = 67108864
    check "qemu-nbd qcow2: structured replies, base:allocation, GO" \
        bash -c "'$CLIENT' '$URI' info | grep -q '^base_allocation=1' && '$CLIENT' '$URI' info | grep -q '^used_go=1'"
    check "qemu-nbd qcow2: whole export reads as qemu-img convert" \
        bash -c "timeout 120 '$CLIENT' '$URI' dump '$T/out' && cmp '$T/out' '$T/a.ref'"
    check "qemu-nbd qcow2: map equals nbdinfo --map" same_map "$URI"
    check "nbd+unix://?socket= (no / before ?)" \
        bash -c "timeout 60 '$CLIENT' 'nbd+unix://?socket=$SOCK' read 1M 4k - | cmp - <(head -c 4096 <(tail -c +1048577 '$T/a.ref'))"
    check "legacy nbd:unix:PATH" \
        bash -c "timeout 60 '$CLIENT' 'nbd:unix:$SOCK' read 20M 64k - | cmp - <(dd if='$T/a.ref' bs=64k skip=320 count=1 status=none)"
    check "option form server.type=unix" \
        bash -c "timeout 60 '$CLIENT' -o 'server.type=unix,server.path=$SOCK' - read 0 1M - | cmp - <(head -c 1M '$T/a.ref')"
    # Writes through our client land in the qcow2 image as qemu-img sees it.
    check "qemu-nbd qcow2: write (FUA)" client -w "$URI" write 5M "$T/pattern4m" fua
    check "qemu-nbd qcow2: zero (no unmap), trim" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' zero 1M 64k && timeout 60 '$CLIENT' -w '$URI' trim 2M 1M"
    check "qemu-nbd qcow2: flush and cache" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' flush && timeout 60 '$CLIENT' '$URI' cache 0 8M"
    check "qemu-nbd qcow2: map after writes equals nbdinfo --map" same_map "$URI"
    stop_server "$QPID"
    check "qemu-nbd qcow2: qemu-img check clean after our writes" qemu-img check -q "$T/a.qcow2"
    check "qemu-nbd qcow2: written data as qemu-io reads it" \
        bash -c "qemu-img convert -O raw '$T/a.qcow2' '$T/b.raw' &&
                 cmp <(dd if='$T/b.raw' bs=1M skip=5 count=4 status=none) '$T/pattern4m' &&
                 cmp <(dd if='$T/b.raw' bs=64k skip=16 count=1 status=none) <(head -c 65536 /dev/zero)"
else
    not_ok "qemu-nbd on a Unix socket did not start"
fi

# ---------------------------------------------------------------- qemu-nbd, raw, TCP, named export
PORT=$(free_port)
truncate -s 32M "$T/r.raw"
URI="nbd://127.0.0.1:$PORT/disk1"
if start_server "$URI" qemu-nbd -t -p "$PORT" -b 127.0.0.1 -x disk1 -f raw "$T/r.raw"; then
    QPID=$LAST_PID
    check "qemu-nbd raw tcp: write 4 MiB" client -w "$URI" write 3M "$T/pattern4m"
    check "qemu-nbd raw tcp: nbdcopy reads what we wrote" \
        bash -c "nbdcopy '$URI' '$T/r.out' && cmp <(dd if='$T/r.out' bs=1M skip=3 count=4 status=none) '$T/pattern4m'"
    check "legacy nbd:127.0.0.1:PORT:exportname=disk1" \
        bash -c "timeout 60 '$CLIENT' 'nbd:127.0.0.1:$PORT:exportname=disk1' read 3M 64k - | cmp - <(head -c 65536 '$T/pattern4m')"
    check "option form server.type=inet" \
        bash -c "timeout 60 '$CLIENT' -o 'server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=disk1' - read 3M 64k - | cmp - <(head -c 65536 '$T/pattern4m')"
    check "qemu-nbd raw tcp: zero with unmap leaves a hole" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' zero 4M 1M unmap && timeout 60 '$CLIENT' '$URI' map | grep -q '^4194304 1048576 3 hole,zero'"
    check "qemu-nbd raw tcp: fast zero" client -w "$URI" zero 6M 64k fast
    check "qemu-nbd raw tcp: map equals nbdinfo --map" same_map "$URI"
    check "qemu-nbd raw tcp: content equals nbdcopy's" \
        bash -c "nbdcopy '$URI' '$T/r2.out' && timeout 60 '$CLIENT' '$URI' dump '$T/r3.out' && cmp '$T/r2.out' '$T/r3.out'"
    # A wrong export name: a clear error naming server and export.
    timeout 30 "$CLIENT" "nbd://127.0.0.1:$PORT/nosuch" info >"$T/err" 2>&1
    check "wrong export name: error names server and export" \
        grep -q "nbd://127.0.0.1:$PORT/nosuch: .*export not available" "$T/err"
    timeout 30 "$CLIENT" -w "nbd://127.0.0.1:$PORT/disk1" read 32M 4096 - >"$T/err" 2>&1
    check "read past the end: the server's error, naming the server" \
        grep -q "nbd://127.0.0.1:$PORT/disk1: read of 4096 bytes at offset 33554432 failed" "$T/err"
    stop_server "$QPID"
else
    not_ok "qemu-nbd on TCP did not start"
fi
timeout 30 "$CLIENT" "nbd://127.0.0.1:$PORT/disk1" info >"$T/err" 2>&1
check "no server: error names the server" grep -q "nbd://127.0.0.1:$PORT/disk1: cannot connect" "$T/err"

# ---------------------------------------------------------------- qemu-nbd: read-only, allocation depth
qemu-img create -q -f qcow2 "$T/base.qcow2" 16M
qemu-io -f qcow2 -c 'write -P 1 0 1M' "$T/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
qemu-io -f qcow2 -c 'write -P 2 4M 1M' "$T/top.qcow2" >/dev/null
SOCK=$T/depth.sock
URI="nbd+unix:///?socket=$SOCK"
if start_server "$URI" qemu-nbd -t -r -A -k "$SOCK" -f qcow2 "$T/top.qcow2"; then
    QPID=$LAST_PID
    timeout 30 "$CLIENT" -w "$URI" info >"$T/err" 2>&1
    check "read-only export opened read-write: clear error" grep -q "export is read-only" "$T/err"
    nbdinfo --map=qemu:allocation-depth "$URI" | awk '{print $1, $2, $3}' | normalize_map >"$T/depth.theirs"
    client -o allocation-depth=on "$URI" depth | normalize_map >"$T/depth.ours"
    check "qemu:allocation-depth equals nbdinfo's" diff "$T/depth.theirs" "$T/depth.ours"
    check "qemu:allocation-depth not asked for: not negotiated" \
        bash -c "timeout 30 '$CLIENT' '$URI' info | grep -q '^allocation_depth=0'"
    stop_server "$QPID"
fi

# ---------------------------------------------------------------- nbdkit memory
SOCK=$T/kit.sock
URI="nbd+unix:///?socket=$SOCK"
if start_server "$URI" nbdkit -f -U "$SOCK" memory 64M; then
    KPID=$LAST_PID
    check "nbdkit memory: write, read back" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' write 1M '$T/pattern4m' && timeout 60 '$CLIENT' '$URI' read 1M 4M - | cmp - '$T/pattern4m'"
    check "nbdkit memory: zero and trim" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' zero 2M 64k && timeout 60 '$CLIENT' -w '$URI' trim 3M 1M unmap 2>/dev/null; timeout 60 '$CLIENT' -w '$URI' trim 3M 1M"
    check "nbdkit memory: map equals nbdinfo --map" same_map "$URI"
    check "nbdkit memory: nbdcopy sees our data" \
        bash -c "nbdcopy '$URI' '$T/k.out' && timeout 60 '$CLIENT' '$URI' dump '$T/k2.out' && cmp '$T/k.out' '$T/k2.out'"
    client -w "$URI" stress 3 8 >"$T/stress" 2>&1
    check "nbdkit memory: 8 threads of concurrent I/O, verified" grep -q "verified_blocks=[1-9]" "$T/stress"
    stop_server "$KPID"
fi

# No fixed newstyle: EXPORT_NAME only, no structured replies, no block status.
if start_server "$URI" nbdkit -f -U "$SOCK" --mask-handshake=0 memory 8M; then
    KPID=$LAST_PID
    client "$URI" info >"$T/info" 2>&1
    check "nbdkit without fixed newstyle: EXPORT_NAME, no structured replies" \
        bash -c "grep -q '^used_go=0' '$T/info' && grep -q '^structured_replies=0' '$T/info'"
    check "nbdkit without fixed newstyle: write and read" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' write 0 '$T/pattern64k' && timeout 60 '$CLIENT' '$URI' read 0 64k - | cmp - '$T/pattern64k'"
    check "no base:allocation: everything is data" \
        bash -c "test \"\$(timeout 60 '$CLIENT' '$URI' map)\" = '0 8388608 0 data'"
    stop_server "$KPID"
fi
if start_server "$URI" nbdkit -f -U "$SOCK" --no-sr memory 8M; then
    KPID=$LAST_PID
    check "nbdkit --no-sr: simple replies" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' write 4k '$T/pattern64k' && timeout 60 '$CLIENT' '$URI' read 4k 64k - | cmp - '$T/pattern64k' &&
                 timeout 60 '$CLIENT' '$URI' info | grep -q '^structured_replies=0'"
    stop_server "$KPID"
fi

# ---------------------------------------------------------------- nbdkit file + block size constraints
truncate -s 16M "$T/f.img"
if start_server "$URI" nbdkit -f -U "$SOCK" --filter=blocksize-policy file "$T/f.img" \
        blocksize-minimum=512 blocksize-preferred=4096 blocksize-maximum=65536 blocksize-error-policy=error; then
    KPID=$LAST_PID
    check "block sizes from NBD_INFO_BLOCK_SIZE" \
        bash -c "timeout 30 '$CLIENT' '$URI' info | grep -q '^max_block=65536' && timeout 30 '$CLIENT' '$URI' info | grep -q '^min_block=512'"
    check "4 MiB write and read split to the 64 KiB maximum" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' write 1M '$T/pattern4m' && timeout 60 '$CLIENT' '$URI' read 1M 4M - | cmp - '$T/pattern4m'"
    check "zero of 2 MiB split to the maximum" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' zero 1M 2M && cmp <(dd if='$T/f.img' bs=1M skip=1 count=2 status=none) <(head -c 2M /dev/zero)"
    check "the file holds what we wrote" cmp <(dd if="$T/f.img" bs=1M skip=3 count=2 status=none) <(tail -c 2M "$T/pattern4m")
    stop_server "$KPID"
fi

# ---------------------------------------------------------------- nbdkit error filter
if start_server "$URI" nbdkit -f -U "$SOCK" --filter=error memory 8M error-pread-rate=100% error-pwrite=ENOSPC error-pwrite-rate=100%; then
    KPID=$LAST_PID
    timeout 30 "$CLIENT" "$URI" read 0 4k - >"$T/err" 2>&1
    check "injected read error: EIO naming the server" \
        grep -q "nbd+unix:///?socket=$SOCK: read of 4096 bytes at offset 0 failed: Input/output error" "$T/err"
    timeout 30 "$CLIENT" -w "$URI" write 0 "$T/pattern64k" >"$T/err" 2>&1
    check "injected write error: ENOSPC" grep -q "write of 65536 bytes at offset 0 failed: No space left on device" "$T/err"
    stop_server "$KPID"
fi
if start_server "$URI" nbdkit -f -U "$SOCK" --filter=error memory 64M error-rate=2%; then
    KPID=$LAST_PID
    timeout 120 "$CLIENT" -w "$URI" stress 2 4 >"$T/err" 2>&1
    rc=$?
    check "random errors under concurrent I/O: a clean failure, no hang or crash" \
        bash -c "[ $rc = 1 ] && grep -q 'Input/output error' '$T/err'"
    stop_server "$KPID"
fi

# ---------------------------------------------------------------- reconnect
truncate -s 64M "$T/rc.img"
SOCK=$T/rc.sock
URI="nbd+unix:///?socket=$SOCK"
kit_delay() { exec nbdkit -f -U "$SOCK" --filter=delay file "$T/rc.img" delay-read=200ms delay-write=200ms; }
if start_server "$URI" kit_delay; then
    KPID=$LAST_PID
    timeout 120 "$CLIENT" -w -o reconnect-delay=15 "$URI" stress 6 4 >"$T/rc.out" 2>&1 &
    CPID=$!
    sleep 2
    kill -KILL "$KPID"; wait "$KPID" 2>/dev/null
    sleep 1
    start_server "$URI" kit_delay
    KPID=$LAST_PID
    wait "$CPID"
    rc=$?
    check "reconnect: nbdkit killed mid-I/O and restarted, I/O completes verified" \
        bash -c "[ $rc = 0 ] && grep -q 'verified_blocks=[1-9][0-9]* connects=[2-9]' '$T/rc.out'"
    [ $rc = 0 ] || cat "$T/rc.out"

    # The same kill without reconnect-delay: a clear error naming the server.
    timeout 120 "$CLIENT" -w "$URI" stress 6 4 >"$T/rc.out" 2>&1 &
    CPID=$!
    sleep 1.5
    kill -KILL "$KPID"; wait "$KPID" 2>/dev/null
    wait "$CPID"
    rc=$?
    check "no reconnect-delay: the killed server is a clear error" \
        bash -c "[ $rc = 1 ] && grep -q 'nbd+unix:///?socket=$SOCK: .*failed: ' '$T/rc.out'"

    # reconnect-delay passes without a server: the requests fail, naming it.
    start_server "$URI" kit_delay
    KPID=$LAST_PID
    timeout 120 "$CLIENT" -w -o reconnect-delay=2 "$URI" stress 10 2 >"$T/rc.out" 2>&1 &
    CPID=$!
    sleep 1
    kill -KILL "$KPID"; wait "$KPID" 2>/dev/null
    start=$(date +%s)
    wait "$CPID"
    rc=$?
    elapsed=$(( $(date +%s) - start ))
    check "reconnect-delay=2 without a server: fails after about 2 s" \
        bash -c "[ $rc = 1 ] && [ $elapsed -ge 1 ] && [ $elapsed -le 20 ] && grep -q 'nbd+unix:///?socket=$SOCK' '$T/rc.out'"
fi
# qemu-nbd restarted under the client, with the file keeping the data.
if start_server "$URI" qemu-nbd -t -k "$SOCK" -f raw "$T/rc.img"; then
    QPID=$LAST_PID
    timeout 120 "$CLIENT" -w -o reconnect-delay=15 "$URI" stress 5 4 >"$T/rc.out" 2>&1 &
    CPID=$!
    sleep 1.5
    kill -KILL "$QPID"; wait "$QPID" 2>/dev/null
    sleep 1
    start_server "$URI" qemu-nbd -t -k "$SOCK" -f raw "$T/rc.img"
    QPID=$LAST_PID
    wait "$CPID"
    rc=$?
    check "reconnect: qemu-nbd killed and restarted, I/O completes verified" \
        bash -c "[ $rc = 0 ] && grep -q 'verified_blocks=[1-9][0-9]* connects=[2-9]' '$T/rc.out'"
    stop_server "$QPID"
fi

# ---------------------------------------------------------------- TLS
mkdir -p "$T/pki/server" "$T/pki/client"
(
    cd "$T/pki" || exit 1
    cat >ca.info <<EOF
cn = test CA
ca
cert_signing_key
expiration_days = 2
EOF
    cat >server.info <<EOF
organization = test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
    cat >client.info <<EOF
organization = test
cn = client
tls_www_client
encryption_key
signing_key
expiration_days = 2
EOF
    certtool --generate-privkey --outfile ca-key.pem 2>/dev/null &&
    certtool --generate-self-signed --load-privkey ca-key.pem --template ca.info --outfile ca-cert.pem 2>/dev/null &&
    certtool --generate-privkey --outfile server/server-key.pem 2>/dev/null &&
    certtool --generate-certificate --load-privkey server/server-key.pem --load-ca-certificate ca-cert.pem \
        --load-ca-privkey ca-key.pem --template server.info --outfile server/server-cert.pem 2>/dev/null &&
    certtool --generate-privkey --outfile client/client-key.pem 2>/dev/null &&
    certtool --generate-certificate --load-privkey client/client-key.pem --load-ca-certificate ca-cert.pem \
        --load-ca-privkey ca-key.pem --template client.info --outfile client/client-cert.pem 2>/dev/null &&
    cp ca-cert.pem server/ && cp ca-cert.pem client/
) || not_ok "certtool could not make certificates"
PORT=$(free_port)
URI="nbds://127.0.0.1:$PORT/?tls-certificates=$T/pki/client"
tls_server() {
    exec qemu-nbd -t -p "$PORT" -b 127.0.0.1 -f raw \
        --object "tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server" --tls-creds tls0 "$T/r.raw"
}
if start_server "$URI" tls_server; then
    QPID=$LAST_PID
    check "TLS x509 (nbds://, tls-certificates=): read equals nbdcopy's" \
        bash -c "timeout 60 '$CLIENT' '$URI' dump '$T/t.out' && nbdcopy '$URI' '$T/t2.out' && cmp '$T/t.out' '$T/t2.out'"
    check "TLS x509 (tls-creds=DIR option): write and read" \
        bash -c "timeout 60 '$CLIENT' -w -o 'tls-creds=$T/pki/client' 'nbd://127.0.0.1:$PORT/' write 0 '$T/pattern64k' &&
                 timeout 60 '$CLIENT' -o 'tls-creds=$T/pki/client' 'nbd://127.0.0.1:$PORT/' read 0 64k - | cmp - '$T/pattern64k'"
    timeout 30 "$CLIENT" "nbd://127.0.0.1:$PORT/" info >"$T/err" 2>&1
    check "plain client against a TLS server: 'requires TLS'" grep -q "requires TLS" "$T/err"
    timeout 30 "$CLIENT" "nbds://127.0.0.1:$PORT/?tls-certificates=$T/pki/client&tls-hostname=other.example" info >"$T/err" 2>&1
    check "TLS: wrong host name in the certificate is refused" test $? -ne 0
    if [ -x "$VMM_IMG" ]; then
        check "vmm-img --object tls-creds-x509 --image-opts driver=nbd,tls-creds=: convert equals nbdcopy's" \
            bash -c "timeout 60 '$VMM_IMG' convert -O raw --object 'tls-creds-x509,id=tls0,dir=$T/pki/client,endpoint=client' \
                         --image-opts 'driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,tls-creds=tls0' \
                         '$T/img-tls.raw' && nbdcopy '$URI' '$T/t3.out' && cmp '$T/img-tls.raw' '$T/t3.out'"
        timeout 30 "$VMM_IMG" info --object "tls-creds-x509,id=tls0,dir=$T/pki/server,endpoint=server" \
            --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,tls-creds=tls0" >"$T/err" 2>&1
        check "vmm-img: server-endpoint credentials refused, naming the object" grep -q "tls0.*endpoint=client" "$T/err"
    fi
    stop_server "$QPID"
fi
mkdir -p "$T/psk"
psktool -u qemu -p "$T/psk/keys.psk" >/dev/null 2>&1
SOCK=$T/tls.sock
URI="nbds+unix:///?socket=$SOCK&tls-psk-file=$T/psk/keys.psk&tls-username=qemu"
psk_server() {
    exec qemu-nbd -t -k "$SOCK" -f raw --object "tls-creds-psk,id=tls0,dir=$T/psk,endpoint=server" \
        --tls-creds tls0 "$T/r.raw"
}
if start_server "$URI" psk_server; then
    QPID=$LAST_PID
    check "TLS PSK against qemu-nbd over a Unix socket" \
        bash -c "timeout 60 '$CLIENT' '$URI' read 0 64k - | cmp - '$T/pattern64k'"
    if [ -x "$VMM_IMG" ]; then
        check "vmm-img --object tls-creds-psk (username=qemu): info and read over TLS PSK" \
            bash -c "timeout 60 '$VMM_IMG' convert -O raw --object 'tls-creds-psk,id=tls1,dir=$T/psk,username=qemu,endpoint=client' \
                         --image-opts 'driver=nbd,server.type=unix,server.path=$SOCK,tls-creds=tls1' '$T/img-psk.raw' &&
                     cmp -n 65536 '$T/img-psk.raw' '$T/pattern64k'"
    fi
    stop_server "$QPID"
fi
if start_server "$URI" nbdkit -f -U "$SOCK" --tls=require --tls-psk="$T/psk/keys.psk" memory 8M; then
    KPID=$LAST_PID
    check "TLS PSK against nbdkit: write, read back" \
        bash -c "timeout 60 '$CLIENT' -w '$URI' write 0 '$T/pattern64k' && timeout 60 '$CLIENT' '$URI' read 0 64k - | cmp - '$T/pattern64k'"
    stop_server "$KPID"
fi

# ---------------------------------------------------------------- vmm-img over nbd
# (the probe's output is kept first: vmm-img fails there, and with pipefail a
# pipe into grep would fail with it)
PROBE=$("$VMM_IMG" info "nbd+unix:///?socket=$T/none.sock" 2>&1 || true)
if [ -x "$VMM_IMG" ] && command -v jq >/dev/null && echo "$PROBE" | grep -q "cannot connect"; then
    SOCK=$T/img.sock
    URI="nbd+unix:///?socket=$SOCK"
    if start_server "$URI" qemu-nbd -t -k "$SOCK" -f qcow2 "$T/a.qcow2"; then
        QPID=$LAST_PID
        check "vmm-img info nbd+unix: virtual size" \
            bash -c "'$VMM_IMG' info '$URI' | grep -q 'virtual size: 64 MiB'"
        check "vmm-img convert nbd+unix -> raw equals qemu-img's" \
            bash -c "'$VMM_IMG' convert -O raw '$URI' '$T/v.raw' && qemu-img convert -O raw '$URI' '$T/q.raw' && cmp '$T/v.raw' '$T/q.raw'"
        check "vmm-img map equals qemu-img map (json)" \
            bash -c "diff <('$VMM_IMG' map --output=json '$URI' | jq -c '.[] | [.start,.length,.data,.zero]') <(qemu-img map --output=json '$URI' | jq -c '.[] | [.start,.length,.data,.zero]')"
        stop_server "$QPID"
    fi
    PORT=$(free_port)
    URI="nbd://127.0.0.1:$PORT/"
    if start_server "$URI" nbdkit -f -p "$PORT" -i 127.0.0.1 memory 32M; then
        KPID=$LAST_PID
        check "vmm-img convert -n raw -> nbd://nbdkit, read back" \
            bash -c "head -c 32M '$T/a.ref' >'$T/a32.raw' && '$VMM_IMG' convert -n -f raw -O raw '$T/a32.raw' '$URI' &&
                     nbdcopy '$URI' '$T/n.out' && cmp '$T/n.out' '$T/a32.raw'"
        stop_server "$KPID"
    fi
else
    echo "# vmm-img with nbd support not available: vmm-img checks skipped"
fi

echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
