#!/usr/bin/env bash
# Builds mirrorfs and mounts a two-replica mirror: demo/replica1 and demo/replica2,
# mounted at demo/mnt. Run as root. Unmount with: target/release/mirrorfs umount demo/mnt
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "demo: run as root (mounting FUSE filesystems needs it)" >&2
  exit 1
fi
scripts/setup.sh
cargo build --release
bin=target/release/mirrorfs
mkdir -p demo/replica1 demo/replica2 demo/mnt
if mountpoint -q demo/mnt; then
  echo "demo: demo/mnt is already mounted; unmount it first: $bin umount demo/mnt" >&2
  exit 1
fi
"$bin" mount demo/replica1 demo/replica2 demo/mnt
echo "hello from mirrorfs" > demo/mnt/hello.txt
echo "Mounted demo/replica1 + demo/replica2 at demo/mnt."
echo "  ls demo/replica1 demo/replica2        # the file is on both"
echo "  $bin health demo/mnt"
echo "  $bin umount demo/mnt"
"$bin" health demo/mnt || true
