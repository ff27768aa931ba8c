#!/usr/bin/env bash
# In the rig's L1: the Linux kernel's v9fs client on fsd, over trans=unix for
# each security model (on an ext4 loop image, for user xattrs) and over
# trans=tcp once. The file tests of issue 7 through real system calls, and the
# host side of each model checked under the mount.
set -euo pipefail
BIN=${VMM_BIN_DIR:?}
SRC=${VMM_SOURCE_DIR:?}
grep -qw 9p /proc/filesystems || modprobe 9p 2>/dev/null || true
grep -qw 9p /proc/filesystems || { echo "SKIP: no 9p file system in this kernel"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
T=$(mktemp -d /tmp/rig-fsd.XXXXXX)
PID=
cleanup() {
  mountpoint -q "$T/mnt" 2>/dev/null && umount -l "$T/mnt" || true
  [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
  mountpoint -q "$T/fs" 2>/dev/null && umount -l "$T/fs" || true
  rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$T/fsd.log" ] && cat "$T/fsd.log" >&2; exit 1; }

truncate -s 256M "$T/fs.img"
mkfs.ext4 -q -F "$T/fs.img"
mkdir "$T/fs" "$T/mnt"
mount -o loop "$T/fs.img" "$T/fs" || fail "loop mount"

start_fsd() {  # MODEL ADDRESS
  rm -rf "$T/fs/exp"; mkdir "$T/fs/exp"
  "$BIN/fsd" --export "$T/fs/exp" --listen "$2" --security-model "$1" --port-file "$T/port" 2>>"$T/fsd.log" &
  PID=$!
  for _ in $(seq 100); do [ -s "$T/port" ] && return 0; sleep 0.1; done
  fail "fsd did not start"
}
stop_fsd() {
  umount "$T/mnt" || fail "umount"
  kill -TERM "$PID"; wait "$PID" || fail "fsd exited with $?"; PID=
  rm -f "$T/port"
}
hostx() {  # FILE NAME -> the little-endian u32 in xattr NAME
  python3 -c 'import os,sys,struct; print(struct.unpack("<I", os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False))[0])' "$1" "$2"
}

file_tests() {  # MODEL ENTRIES
  local m=$1 n=$2 M=$T/mnt H=$T/fs/exp
  mkdir "$M/a" "$M/b"
  echo hello >"$M/a/f"; [ "$(cat "$M/a/f")" = hello ] || fail "$m: read back"
  echo more >>"$M/a/f"; [ "$(wc -l <"$M/a/f")" = 2 ] || fail "$m: append"
  truncate -s 3 "$M/a/f"; [ "$(cat "$M/a/f")" = hel ] || fail "$m: truncate"
  mv "$M/a/f" "$M/b/g"; [ -e "$M/a/f" ] && fail "$m: rename left the old name"
  [ "$(cat "$M/b/g")" = hel ] || fail "$m: rename across directories"
  ln "$M/b/g" "$M/a/hard"; [ "$(stat -c %h "$M/b/g")" = 2 ] || fail "$m: hard link count"
  ln -s ../b/g "$M/a/sym"; [ "$(readlink "$M/a/sym")" = ../b/g ] || fail "$m: readlink"
  [ "$(cat "$M/a/sym")" = hel ] || fail "$m: through the symlink"
  chmod 640 "$M/b/g"; [ "$(stat -c %a "$M/b/g")" = 640 ] || fail "$m: chmod"
  chown 1000:100 "$M/b/g"; [ "$(stat -c %u:%g "$M/b/g")" = 1000:100 ] || fail "$m: chown"
  mkfifo "$M/a/fifo"; [ -p "$M/a/fifo" ] || fail "$m: mkfifo"
  python3 -c 'import os,sys; os.setxattr(sys.argv[1], "user.k", b"v"); assert os.getxattr(sys.argv[1], "user.k") == b"v"' "$M/b/g" \
    || fail "$m: xattr"
  # POSIX locks between two processes
  python3 - "$M/b/g" <<'PY' || fail "$m: locks"
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX, 10, 0)
pid = os.fork()
if pid == 0:
    fd2 = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
        os._exit(1)          # got a lock another process holds
    except OSError:
        pass
    fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 100)   # a disjoint range
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
PY
  mkdir "$M/many"; (cd "$M/many" && seq -f 'e%05g' 1 "$n" | xargs touch) || fail "$m: $n files"
  [ "$(ls -f "$M/many" | wc -l)" = $((n + 2)) ] || fail "$m: readdir of $n entries: $(ls -f "$M/many" | wc -l)"
  cp -a "$SRC/docs" "$SRC/fsd" "$M/" || fail "$m: copy in"
  (cd "$SRC" && tar --sort=name --owner=0 --group=0 --mtime=@0 -cf - docs fsd | sha256sum) >"$T/want"
  (cd "$M" && tar --sort=name --owner=0 --group=0 --mtime=@0 -cf - docs fsd | sha256sum) >"$T/got"
  cmp -s "$T/want" "$T/got" || fail "$m: the tree read back differs"
  diff -r "$SRC/docs" "$M/docs" >/dev/null || fail "$m: diff -r"
  # the host side
  case $m in
    passthrough)
      [ "$(stat -c %u:%g:%a "$H/b/g")" = 1000:100:640 ] || fail "$m: host ownership $(stat -c %u:%g:%a "$H/b/g")"
      [ -p "$H/a/fifo" ] && [ -L "$H/a/sym" ] || fail "$m: host fifo/symlink" ;;
    mapped-xattr)
      [ "$(stat -c %u "$H/b/g")" = 0 ] || fail "$m: host owner"
      [ "$(hostx "$H/b/g" user.virtfs.uid)" = 1000 ] || fail "$m: user.virtfs.uid"
      [ "$(hostx "$H/b/g" user.virtfs.gid)" = 100 ] || fail "$m: user.virtfs.gid"
      [ "$(hostx "$H/b/g" user.virtfs.mode)" = $((0100640)) ] || fail "$m: user.virtfs.mode"
      [ -f "$H/a/fifo" ] && [ -f "$H/a/sym" ] || fail "$m: special files are regular files on the host" ;;
    mapped-file)
      grep -qx virtfs.uid=1000 "$H/b/.virtfs_metadata/g" || fail "$m: metadata $(cat "$H/b/.virtfs_metadata/g")"
      grep -qx "virtfs.mode=$((0100640))" "$H/b/.virtfs_metadata/g" || fail "$m: metadata mode"
      ls -a "$M/b" | grep -q virtfs && fail "$m: metadata visible" ;;
  esac
  echo "ok $m"
}

# 10,000 entries once (slow under TCG), fewer for the other models.
entries=10000
for model in passthrough mapped-xattr mapped-file; do
  start_fsd "$model" "unix:$T/9p.sock"
  mount -t 9p -o trans=unix,version=9p2000.L,msize=524288 "$T/9p.sock" "$T/mnt" || fail "$model: mount trans=unix"
  file_tests "$model" "$entries"
  entries=500
  stop_fsd
done

start_fsd passthrough tcp:127.0.0.1:0
mount -t 9p -o trans=tcp,port="$(cat "$T/port")",version=9p2000.L,msize=262144 127.0.0.1 "$T/mnt" || fail "mount trans=tcp"
dd if=/dev/urandom of="$T/blob" bs=1M count=8 status=none
cp "$T/blob" "$T/mnt/blob"; cmp "$T/blob" "$T/mnt/blob" || fail "tcp: 8 MiB round trip"
echo "ok trans=tcp"
stop_fsd
echo PASS
