#!/usr/bin/env bash
# Measures the mirrorfs daemon's resident memory against what the kernel holds and what
# is written: a 2-replica mirror (release build), 200,000 files in 400 directories made
# and looked up through the mount, then 20 GiB written through it (ten passes over a
# 2 GiB file, so that the disk needs 4 GiB). Prints the daemon's RSS after each phase,
# the bytes per inode the kernel holds, and the growth while writing.
#
# Usage: scripts/bench-memory.sh [--files N] [--write-gib G] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

files=200000
write_gib=20
base=/var/tmp/mirrorfs-bench-memory
while (($#)); do
  case "$1" in
    --files) files="$2"; shift ;;
    --write-gib) write_gib="$2"; shift ;;
    --dir) base="$2"; shift ;;
    *) echo "bench-memory.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

scripts/setup.sh fio
cargo build --release --quiet
bin="$PWD/target/release/mirrorfs"

mnt="$base/mnt"
mountpoint -q "$mnt" 2>/dev/null && umount -l "$mnt"
rm -rf "$base"
mkdir -p "$base/r1" "$base/r2" "$mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then "$bin" umount "$mnt" >/dev/null || umount -l "$mnt"; fi
  rm -rf "$base"
}
trap cleanup EXIT

"$bin" mount --log-file "$base/log" "$base/r1" "$base/r2" "$mnt"
pid=$(pgrep -f "mirrorfs mount --log-file $base/log" | head -1)
rss() { awk '/^VmRSS/ {print $2 * 1024}' "/proc/$pid/status"; }

start=$(rss)
python3 - "$mnt" "$files" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
dirs = 400
for d in range(dirs):
    os.mkdir(f"{root}/d{d}")
for i in range(n):
    os.close(os.open(f"{root}/d{i % dirs}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
# Looked up again, as a scan would: the kernel holds every one.
for i in range(n):
    os.stat(f"{root}/d{i % dirs}/f{i}")
EOF
held=$(rss)

fio --name=mem --directory="$mnt" --ioengine=psync --rw=write --bs=1M --size=2G \
  --filename=big.dat --loops=1 --output-format=terse >/dev/null
written_2g=$(rss)
fio --name=mem --directory="$mnt" --ioengine=psync --rw=write --bs=1M --size=2G \
  --filename=big.dat --loops=$((write_gib / 2 - 1)) --output-format=terse >/dev/null
written=$(rss)

python3 - "$start" "$held" "$written_2g" "$written" "$files" "$write_gib" <<'EOF'
import sys
start, held, w2, w, files, gib = map(int, sys.argv[1:])
mib = lambda b: f"{b / 2**20:.1f} MiB"
print(f"daemon RSS at mount:                     {mib(start)}")
print(f"after {files} files looked up:         {mib(held)}"
      f"  ({(held - start) / files:.0f} bytes per inode held)")
print(f"after 2 GiB written:                     {mib(w2)}")
print(f"after {gib} GiB written:                    {mib(w)}"
      f"  (growth over the last {gib - 2} GiB: {mib(w - w2)})")
EOF
