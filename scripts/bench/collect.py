"""Turns one run's outputs (BASE/out.I.MEASURE, one I per directory) into result lines
"measure target value", the value averaged over the directories.

Usage: collect.py BASE TARGET NDIRS"""

import glob
import json
import os
import sys

base, target, ndirs = sys.argv[1], sys.argv[2], int(sys.argv[3])
values = {}
for i in range(ndirs):
    for path in glob.glob(f"{base}/out.{i}.*"):
        kind = os.path.basename(path).split(".", 2)[2]
        text = open(path).read()
        if kind in ("meta", "tree"):
            for line in text.splitlines():
                measure, value = line.split()
                values.setdefault(measure, []).append(float(value))
            continue
        job = json.loads(text)["jobs"][0]
        if kind.startswith("seq"):
            side = "write" if kind == "seqwrite" else "read"
            value = job[side]["bw_bytes"] / 2**20
        else:
            side = "write" if kind.startswith("randwrite") else "read"
            value = job[side]["iops"]
        values.setdefault(kind, []).append(value)
for measure, vs in values.items():
    print(measure, target, sum(vs) / len(vs))
