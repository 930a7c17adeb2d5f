#!/usr/bin/env bash
# Runs the whole test suite: unit tests and the integration tests, which mount mirrorfs
# over temporary directories and therefore need root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
  echo "test: run as root (the tests mount FUSE filesystems and switch users)" >&2
  exit 1
fi
scripts/setup.sh bindfs sshfs openssh-server iproute2 xfsprogs
cargo test --all-targets "$@"
