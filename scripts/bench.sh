#!/usr/bin/env bash
# Measures mirrorfs side by side with the physical limit, in one run: the same workloads
# on every target, interleaved (A B A B ...) so that machine drift hits all targets
# alike. Prints, per workload, the median of the rounds and ratios to native2.
#
# Targets:
#   native          one plain directory
#   native2         the workload run into two plain directories at once (the physical
#                   limit of a 2-way mirror on this disk); figures are per copy
#   mirrorfs-sync   a 2-replica mirror, --mode sync
#   mirrorfs-async  a 2-replica mirror, --mode async
# Workloads:
#   seqwrite   fio, sequential 1 MiB writes, fsync at the end (MiB/s)
#   randwrite  fio, 4 KiB random writes, one job, time-bound (IOPS)
#   create     5,000 files of 4 KiB in 50 directories, one process (files/s)
#
# Usage: scripts/bench.sh [--quick] [--rounds N] [--dir DIR]
#   --quick   smaller sizes and one round fewer (about a minute)
#   --dir     where replicas and native directories go (default /var/tmp/mirrorfs-bench;
#             it must be on the disk you want to measure, not tmpfs)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
rounds=3
base=/var/tmp/mirrorfs-bench
while (($#)); do
  case "$1" in
    --quick) quick=1; rounds=2 ;;
    --rounds) rounds="$2"; shift ;;
    --dir) base="$2"; shift ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if ((EUID != 0)); then
  echo "bench: run as root (it mounts FUSE filesystems)" >&2
  exit 1
fi
if ((quick)); then
  seq_size=256M; rand_size=64M; rand_time=4
else
  seq_size=1G; rand_size=256M; rand_time=8
fi

scripts/setup.sh
if ! command -v fio >/dev/null; then
  echo "bench: installing fio" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi
cargo build --release --quiet
bin="$PWD/target/release/mirrorfs"

rm -rf "$base"
mkdir -p "$base"
results="$base/results"
: >"$results"
mounted=()
cleanup() {
  for m in "${mounted[@]}"; do
    "$bin" umount "$m" >/dev/null 2>&1 || umount -l "$m" 2>/dev/null || true
  done
}
trap cleanup EXIT

# Prepares target $1 for a run and prints the directories the workload runs in (two for
# native2).
prepare() {
  local t="$1" d="$base/$1"
  if [[ -d "$d/mnt" ]] && mountpoint -q "$d/mnt"; then
    "$bin" umount "$d/mnt" >/dev/null
  fi
  rm -rf "$d"
  case "$t" in
    native) mkdir -p "$d/a"; echo "$d/a" ;;
    native2) mkdir -p "$d/a" "$d/b"; echo "$d/a $d/b" ;;
    mirrorfs-*)
      mkdir -p "$d/r1" "$d/r2" "$d/mnt"
      "$bin" mount --mode "${t#mirrorfs-}" --log-file "$d/log" "$d/r1" "$d/r2" "$d/mnt"
      mounted+=("$d/mnt")
      echo "$d/mnt" ;;
  esac
}

finish() {
  local d="$base/$1"
  if [[ -d "$d/mnt" ]] && mountpoint -q "$d/mnt"; then
    "$bin" umount "$d/mnt" >/dev/null
  fi
  sync
}

# Runs workload $1 in each directory given (at once) and prints the mean per directory.
run() {
  local w="$1"; shift
  local pids=() outs=() i=0
  for dir in "$@"; do
    local out="$base/out.$i"
    outs+=("$out")
    case "$w" in
      seqwrite)
        fio --name=seq --directory="$dir" --rw=write --bs=1M --size="$seq_size" \
          --ioengine=psync --end_fsync=1 --output-format=json >"$out" & ;;
      randwrite)
        fio --name=rand --directory="$dir" --rw=randwrite --bs=4k --size="$rand_size" \
          --ioengine=psync --time_based --runtime="$rand_time" --output-format=json \
          >"$out" & ;;
      create)
        python3 - "$dir" >"$out" <<'EOF' &
import os, sys, time
d = sys.argv[1]
data = b"x" * 4096
t = time.monotonic()
for i in range(50):
    os.mkdir(f"{d}/d{i}")
    for j in range(100):
        with open(f"{d}/d{i}/f{j}", "wb") as f:
            f.write(data)
print(5000 / (time.monotonic() - t))
EOF
        ;;
    esac
    pids+=($!)
    i=$((i + 1))
  done
  for p in "${pids[@]}"; do wait "$p"; done
  python3 - "$w" "${outs[@]}" <<'EOF'
import json, sys
w, outs = sys.argv[1], sys.argv[2:]
vals = []
for o in outs:
    text = open(o).read()
    if w == "create":
        vals.append(float(text))
    else:
        job = json.loads(text)["jobs"][0]["write"]
        vals.append(job["bw_bytes"] / 2**20 if w == "seqwrite" else job["iops"])
print(sum(vals) / len(vals))
EOF
}

targets=(native native2 mirrorfs-sync mirrorfs-async)
workloads=(seqwrite randwrite create)
for ((round = 1; round <= rounds; round++)); do
  for w in "${workloads[@]}"; do
    for t in "${targets[@]}"; do
      # shellcheck disable=SC2046
      v=$(run "$w" $(prepare "$t"))
      finish "$t"
      echo "$w $t $v" >>"$results"
      printf 'round %d  %-9s %-15s %12.1f\n' "$round" "$w" "$t" "$v" >&2
    done
  done
done

python3 - "$results" "$seq_size" "$rounds" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {}
for w, t, v in rows:
    med.setdefault((w, t), []).append(float(v))
med = {k: statistics.median(v) for k, v in med.items()}
units = {"seqwrite": "MiB/s", "randwrite": "IOPS", "create": "files/s"}
targets = ["native", "native2", "mirrorfs-sync", "mirrorfs-async"]
print(f"median of {sys.argv[3]} interleaved rounds; seqwrite {sys.argv[2]}; native2 and "
      "mirrorfs figures are per copy")
print()
print("| workload | " + " | ".join(targets) + " | sync / native2 | async / native2 |")
print("|---" * (len(targets) + 3) + "|")
for w in ["seqwrite", "randwrite", "create"]:
    cells = [f"{med[(w, t)]:.0f}" for t in targets]
    n2 = med[(w, "native2")]
    print(f"| {w} ({units[w]}) | " + " | ".join(cells)
          + f" | {med[(w, 'mirrorfs-sync')] / n2:.2f} | {med[(w, 'mirrorfs-async')] / n2:.2f} |")
EOF
