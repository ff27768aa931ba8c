#!/usr/bin/env bash
# blockd vs qemu-nbd vs nbdkit (file plugin) serving the same image, same
# machine, one run. Sequential read and write with nbdcopy (1 GiB), 4 KiB random
# read and write with fio's nbd engine (depth 1 and 32, 1 and 4 connections).
# Prints MB/s or IOPS per server and the ratios blockd/qemu-nbd, blockd/nbdkit
# (above 1: blockd is faster).
#   bench/bench-nbd.sh [BIN_DIR] [WORK_DIR] [FIO_SECONDS]
set -euo pipefail
BIN=${1:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
W=${2:-/var/tmp/vmm-bench-nbd}
SECS=${3:-4}
for t in qemu-nbd nbdkit nbdcopy fio qemu-img; do command -v $t >/dev/null || { echo "needs $t"; exit 1; }; done
mkdir -p "$W"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; rm -f "$W"/*.sock; }
trap cleanup EXIT

if [ ! -f "$W/disk.raw" ]; then
  head -c 1G /dev/urandom >"$W/disk.raw"
  qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/disk.qcow2"
fi
wait_sock() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

start() { # NAME FMT -> starts the server on $W/NAME.sock
  local sock=$W/$1.sock img=$W/disk.$2
  rm -f "$sock"
  case $1 in
    blockd) "$BIN/blockd" -k "$sock" -f "$2" -t -e 8 "$img" & ;;
    qemu-nbd) qemu-nbd -k "$sock" -f "$2" -t -e 8 "$img" & ;;
    nbdkit) nbdkit -f --unix "$sock" file "$img" & ;;
  esac
  PIDS+=($!)
  wait_sock "$sock"
}
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PIDS=(); }
uri() { echo "nbd+unix:///?socket=$W/$1.sock"; }

best_seconds() { # COMMAND... -> best wall time of 3
  local best=
  for _ in 1 2 3; do
    local s e t
    s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
    t=$(echo "$e - $s" | bc -l)
    if [ -z "$best" ] || [ "$(echo "$t < $best" | bc -l)" = 1 ]; then best=$t; fi
  done
  echo "$best"
}
fio_iops() { # URI RW DEPTH JOBS
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth="$3" --numjobs="$4" \
      --size=1G --time_based --runtime="$SECS" --group_reporting --output-format=json 2>/dev/null \
    | sed -n "/^{/,\$p" \
    | jq '.jobs[0] | (.read.iops + .write.iops) | floor'
}
ratio() { echo "scale=2; $1 / $2" | bc -l; }

row() { # LABEL VALUE_blockd VALUE_qemu VALUE_nbdkit UNIT
  local r1 r2="-"
  r1=$(ratio "$2" "$3")
  [ "$4" != "-" ] && r2=$(ratio "$2" "$4")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" "$5" "$r1" "$r2"
}

echo "| row | blockd | qemu-nbd | nbdkit | unit | blockd/qemu-nbd | blockd/nbdkit |"
echo "|---|---|---|---|---|---|---|"
for fmt in raw qcow2; do
  servers="blockd qemu-nbd"; [ $fmt = raw ] && servers="$servers nbdkit"
  declare -A rd wr
  for s in $servers; do
    start $s $fmt
    t=$(best_seconds nbdcopy "$(uri $s)" null:); rd[$s]=$(echo "1024 / $t" | bc -l | xargs printf '%.0f')
    t=$(best_seconds nbdcopy "$W/disk.raw" "$(uri $s)"); wr[$s]=$(echo "1024 / $t" | bc -l | xargs printf '%.0f')
    stop_all
  done
  row "$fmt seq read (nbdcopy)" "${rd[blockd]}" "${rd[qemu-nbd]}" "${rd[nbdkit]:--}" MB/s
  row "$fmt seq write (nbdcopy)" "${wr[blockd]}" "${wr[qemu-nbd]}" "${wr[nbdkit]:--}" MB/s
  for rw in randread randwrite; do
    for d in 1 32; do
      for j in 1 4; do
        declare -A io
        for s in $servers; do start $s $fmt; io[$s]=$(fio_iops "$(uri $s)" $rw $d $j); stop_all; done
        row "$fmt 4k $rw qd$d x$j conn" "${io[blockd]}" "${io[qemu-nbd]}" "${io[nbdkit]:--}" IOPS
        unset io
      done
    done
  done
  unset rd wr
done
