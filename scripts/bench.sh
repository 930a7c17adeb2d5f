#!/usr/bin/env bash
# Measures mirrorfs side by side with the physical limit and with the FUSE filesystems
# users would otherwise pick, in one run: the same workloads on every target, interleaved
# (A B A B ...) so that machine drift hits all targets alike. Prints, per workload, the
# median of the rounds and the ratios mirrorfs's targets are judged by.
#
# Targets:
#   native          one plain directory
#   native2         the workload run into two plain directories at once (the physical
#                   limit of a 2-way mirror on this disk); figures are per copy
#   mirrorfs-sync   a 2-replica mirror, --mode sync
#   mirrorfs-async  a 2-replica mirror, --mode async
#   bindfs          bindfs over one directory (a mature single-copy FUSE passthrough)
#   mergerfs        mergerfs over one directory (a popular FUSE union), default options
#   baseline-sync   with --baseline BIN: mirrorfs-sync served by another mirrorfs binary
#                   (a build of an earlier commit), to measure a change against it
# Workloads:
#   seqwrite             fio, sequential 1 MiB writes, fsync at the end (MiB/s)
#   seqread-cold/-warm   fio, reading that file back after dropping caches, then again
#   randwrite-1/-4       fio, 4 KiB random writes, 1 or 4 jobs, time-bound (IOPS)
#   randread-1/-4        fio, 4 KiB random reads of that file (IOPS)
#   create/stat/rename/unlink   of N files in nested directories, one process (files/s)
#   untar, rm            a generated source-like tree (~7,300 entries, ~70 MB), seconds
#
# Usage: scripts/bench.sh [--quick] [--rounds N] [--dir DIR] [--targets "A B ..."]
#                        [--baseline BIN] [--groups "seq rand meta tree"]
#   --quick   one round at smaller sizes (about 2 minutes)
#   --groups  which workload groups run (default all four)
#   --dir     where everything goes (default /var/tmp/mirrorfs-bench; it must be on the
#             disk to measure, not tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
rounds=3
base=/var/tmp/mirrorfs-bench
targets="native native2 mirrorfs-sync mirrorfs-async bindfs mergerfs"
baseline=""
groups=(seq rand meta tree)
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds="$2"; shift ;;
    --dir) base="$2"; shift ;;
    --targets) targets="$2"; shift ;;
    --baseline) baseline="$(realpath "$2")"; shift ;;
    --groups) read -r -a groups <<<"$2"; shift ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if ((EUID != 0)); then
  echo "bench: run as root (it mounts FUSE filesystems and drops caches)" >&2
  exit 1
fi
if ((quick)); then
  seq_size=256M; rand_size=64M; rand_time=2; meta_files=2000; tree_scale=0.25
  ((rounds > 1)) && rounds=1
else
  seq_size=2G; rand_size=256M; rand_time=3; meta_files=20000; tree_scale=1
fi

if [[ -n "$baseline" && " $targets " != *" baseline-sync "* ]]; then
  targets="$targets baseline-sync"
fi
scripts/setup.sh fio bindfs mergerfs
cargo build --release --quiet
bin="$PWD/target/release/mirrorfs"
helpers="$PWD/scripts/bench"

mkdir -p "$base"
for m in "$base"/*/mnt; do
  mountpoint -q "$m" 2>/dev/null && umount -l "$m"
done
rm -rf "${base:?}"/*
results="$base/results"
: >"$results"
cleanup() {
  for m in "$base"/*/mnt; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  return 0
}
trap cleanup EXIT

python3 "$helpers/tree.py" "$base/tree.tar" "$tree_scale"

# Makes a fresh target $1 and prints the directories a workload runs in (two for
# native2).
prepare() {
  local t="$1" d="$base/$1"
  finish "$t"
  rm -rf "$d"
  case "$t" in
    native) mkdir -p "$d/a"; echo "$d/a" ;;
    native2) mkdir -p "$d/a" "$d/b"; echo "$d/a $d/b" ;;
    mirrorfs-*)
      mkdir -p "$d/r1" "$d/r2" "$d/mnt"
      "$bin" mount --mode "${t#mirrorfs-}" --log-file "$d/log" "$d/r1" "$d/r2" "$d/mnt"
      echo "$d/mnt" ;;
    baseline-*)
      mkdir -p "$d/r1" "$d/r2" "$d/mnt"
      "$baseline" mount --mode "${t#baseline-}" --log-file "$d/log" "$d/r1" "$d/r2" "$d/mnt"
      echo "$d/mnt" ;;
    bindfs)
      mkdir -p "$d/src" "$d/mnt"
      bindfs "$d/src" "$d/mnt"
      echo "$d/mnt" ;;
    mergerfs)
      mkdir -p "$d/src" "$d/mnt"
      mergerfs "$d/src" "$d/mnt"
      echo "$d/mnt" ;;
  esac
}

# Unmounts target $1 if it is mounted.
finish() {
  local m="$base/$1/mnt"
  if mountpoint -q "$m" 2>/dev/null; then
    case "$1" in
      mirrorfs-*) "$bin" umount "$m" >/dev/null ;;
      baseline-*) "$baseline" umount "$m" >/dev/null ;;
      *) umount "$m" ;;
    esac
  fi
}

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

fio_job() {
  local dir="$1" out="$2"; shift 2
  fio --name=job --directory="$dir" --ioengine=psync --output-format=json "$@" >"$out"
}

# Workload steps: each takes a directory and an output path prefix.
seqwrite() {
  fio_job "$1" "$2.seqwrite" --rw=write --bs=1M --size="$seq_size" --filename=seq.dat \
    --end_fsync=1
}
seqread() {
  fio_job "$1" "$2.seqread-$3" --rw=read --bs=1M --size="$seq_size" --filename=seq.dat
}
seqread_cold() { seqread "$1" "$2" cold; }
seqread_warm() { seqread "$1" "$2" warm; }
rand() {
  fio_job "$1" "$2.rand$3-$4" --rw="rand$3" --bs=4k --size="$rand_size" --filename=rand.dat \
    --numjobs="$4" --group_reporting --time_based --runtime="$rand_time"
}
randwrite_1() { rand "$1" "$2" write 1; }
randread_1() { rand "$1" "$2" read 1; }
randwrite_4() { rand "$1" "$2" write 4; }
randread_4() { rand "$1" "$2" read 4; }
meta() { python3 "$helpers/meta.py" "$1" "$meta_files" >"$2.meta"; }
tree() { python3 "$helpers/untar.py" "$base/tree.tar" "$1" >"$2.tree"; }

# Runs step $1 in every directory of `dirs` at once.
each() {
  local pids=() i=0
  for dir in "${dirs[@]}"; do
    "$1" "$dir" "$base/out.$i" &
    pids+=($!)
    i=$((i + 1))
  done
  for p in "${pids[@]}"; do wait "$p"; done
}

# Runs workload group $1 on target $2 and appends one line per measure to the results:
# "measure target value" (per directory, averaged).
run() {
  local group="$1" t="$2"
  read -r -a dirs <<<"$(prepare "$t")"
  case "$group" in
    seq) each seqwrite; drop_caches; each seqread_cold; each seqread_warm ;;
    rand) each randwrite_1; each randread_1; each randwrite_4; each randread_4 ;;
    meta) each meta ;;
    tree) each tree ;;
  esac
  finish "$t"
  python3 "$helpers/collect.py" "$base" "$t" "${#dirs[@]}" >>"$results"
}

# Each round starts one target further on (A B C, B C A, ...): a target run right after
# another's heavy deletes finds the disk in a different state (ext4 reuses the freed
# inodes), which would otherwise always favour or penalize the same one.
read -r -a order <<<"$targets"
started=$(date +%s)
for ((round = 1; round <= rounds; round++)); do
  shift_by=$(((round - 1) % ${#order[@]}))
  rotated=("${order[@]:shift_by}" "${order[@]:0:shift_by}")
  for g in "${groups[@]}"; do
    for t in "${rotated[@]}"; do
      rm -f "$base"/out.*
      run "$g" "$t"
      echo "round $round: $g on $t done ($(($(date +%s) - started)) s)" >&2
    done
  done
done

python3 "$helpers/report.py" "$results" "$rounds" \
  "seqwrite $seq_size; random I/O on $rand_size for ${rand_time}s; $meta_files files; tree scale $tree_scale"
