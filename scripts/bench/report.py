"""Prints the benchmark table: per measure, the median over the rounds on every target,
mirrorfs's ratio to the reference the targets name (native for reads and stat, native2
for everything that writes), whether mirrorfs beats both single-copy FUSE peers, and, when
a baseline binary ran, mirrorfs-sync's ratio to it (the median of the rounds' ratios).

Usage: report.py RESULTS ROUNDS DESCRIPTION"""

import statistics
import sys

rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
rounds, description = sys.argv[2], sys.argv[3]
runs = {}
for measure, target, value in rows:
    runs.setdefault((measure, target), []).append(float(value))
med = {k: statistics.median(v) for k, v in runs.items()}
order = ["seqwrite", "seqread-cold", "seqread-warm", "randwrite-1", "randwrite-4",
         "randread-1", "randread-4", "create", "stat", "rename", "unlink", "untar", "rm"]
unit = {"seqwrite": "MiB/s", "seqread-cold": "MiB/s", "seqread-warm": "MiB/s",
        "untar": "s", "rm": "s", "create": "files/s", "stat": "files/s",
        "rename": "files/s", "unlink": "files/s"}
reads = {"seqread-cold", "seqread-warm", "randread-1", "randread-4", "stat"}
targets = [t for t in ["native", "native2", "mirrorfs-sync", "mirrorfs-async", "bindfs",
                       "mergerfs", "baseline-sync"] if any(k[1] == t for k in med)]
baseline = "baseline-sync" in targets
print(f"Median of {rounds} interleaved round(s); {description}. native2 and mirrorfs "
      "figures are per copy; untar and rm in seconds (lower is better), the rest rates.")
print()
head = ["measure"] + targets + ["sync / ref", "async / ref", "sync beats peers"]
if baseline:
    head.append("sync / baseline")
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))


def fmt(v):
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


for m in order:
    if not any(k[0] == m for k in med):
        continue
    cells = [fmt(med[(m, t)]) if (m, t) in med else "" for t in targets]
    ref = "native" if m in reads else "native2"
    is_time = unit.get(m) == "s"

    def ratio(t):
        if (m, t) not in med or (m, ref) not in med:
            return ""
        r = med[(m, t)] / med[(m, ref)]
        return f"{r:.2f}x {ref}"

    peers = [p for p in ("bindfs", "mergerfs") if (m, p) in med]
    beats = ""
    if (m, "mirrorfs-sync") in med and peers:
        s = med[(m, "mirrorfs-sync")]
        ok = all(s < med[(m, p)] if is_time else s > med[(m, p)] for p in peers)
        beats = "yes" if ok else "no"
    label = f"{m} ({unit.get(m, 'IOPS')})"
    row = [label] + cells + [ratio("mirrorfs-sync"), ratio("mirrorfs-async"), beats]
    if baseline:
        # The median of the rounds' own ratios: each round runs both targets back to
        # back, so the drift between rounds (larger here than the effects measured)
        # cancels. Above 1 is better than the baseline (for times: baseline / mirrorfs).
        pairs = list(zip(runs.get((m, "mirrorfs-sync"), []), runs.get((m, "baseline-sync"), [])))
        ratios = [b / s if is_time else s / b for s, b in pairs if s and b]
        row.append(f"{statistics.median(ratios):.2f}" if ratios else "")
    print("| " + " | ".join(row) + " |")
