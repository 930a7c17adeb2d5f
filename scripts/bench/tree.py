"""Writes a tar of a generated source-like tree: about 7,300 entries (650 directories up to
five deep, 6,650 files) and 70 MB, with file sizes spread like a source tree's (most a
few KiB, a few up to 1 MiB). Fixed seed: every run and machine gets the same tree.

Usage: tree.py OUT.tar [SCALE]   (SCALE multiplies the entry count, e.g. 0.25)"""

import io
import random
import sys
import tarfile

out = sys.argv[1]
scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rng = random.Random(20261126)
dirs = ["tree"]
n_dirs = int(650 * scale)
while len(dirs) < n_dirs:
    parent = rng.choice(dirs)
    if parent.count("/") < 5:
        dirs.append(f"{parent}/d{len(dirs)}")
with tarfile.open(out, "w") as tar:
    for d in dirs:
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    for i in range(int(6650 * scale)):
        size = min(int(rng.lognormvariate(8.3, 1.3)), 1 << 20)
        info = tarfile.TarInfo(f"{rng.choice(dirs)}/f{i}.c")
        info.size = size
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(rng.randbytes(size)))
