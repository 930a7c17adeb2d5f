"""Extracts a tar with tar(1) into DIR, then removes the tree with rm -rf; prints the
seconds each took.

Usage: untar.py TAR DIR"""

import subprocess
import sys
import time

tar, root = sys.argv[1], sys.argv[2]
start = time.monotonic()
subprocess.run(["tar", "-xf", tar, "-C", root], check=True)
print("untar", time.monotonic() - start)
start = time.monotonic()
subprocess.run(["rm", "-rf", f"{root}/tree"], check=True)
print("rm", time.monotonic() - start)
