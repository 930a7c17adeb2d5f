#!/usr/bin/env bash
# Installs the system packages mirrorfs's build, tests and demo need on Debian 12, if
# they are missing: attr and acl (the tests drive xattrs and ACLs with their tools), and
# any further packages named as arguments (the benchmark's fio and mergerfs; the tests'
# bindfs, and sshfs, openssh-server, iproute2 and xfsprogs for replicas on another host
# and on another filesystem).
# The FUSE kernel module and /dev/fuse come with the kernel; mounting as root needs no
# fusermount.
set -euo pipefail

need=()
for pkg in attr acl "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ ! -c /dev/fuse ]]; then
  echo "setup: /dev/fuse is missing; load the fuse module (modprobe fuse)" >&2
  exit 1
fi
