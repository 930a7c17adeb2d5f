"""Creates N empty files in nested directories (100 directories of N/100), then stats,
renames and unlinks every one; prints the rate of each phase in files/s.

Usage: meta.py DIR N"""

import os
import sys
import time

root, n = sys.argv[1], int(sys.argv[2])
per = max(n // 100, 1)
names = [(f"{root}/m/d{i // per}", f"f{i % per}") for i in range(n)]
os.mkdir(f"{root}/m")
for d in sorted({d for d, _ in names}):
    os.mkdir(d)


def timed(label, op):
    start = time.monotonic()
    for d, f in names:
        op(d, f)
    print(label, n / (time.monotonic() - start))


def create(d, f):
    os.close(os.open(f"{d}/{f}", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))


timed("create", create)
timed("stat", lambda d, f: os.stat(f"{d}/{f}"))
timed("rename", lambda d, f: os.rename(f"{d}/{f}", f"{d}/r{f}"))
timed("unlink", lambda d, f: os.unlink(f"{d}/r{f}"))
