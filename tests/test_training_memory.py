"""training/memory.py (issue #28): on glibc the trainer's freed chunks go back to the system. Run in a child
process: the mmap threshold is set once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import numpy as np
from training import memory

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024

assert memory.bound_heap()
# A freed 24 MiB block raises glibc's default threshold past 8 MiB: without the fix, the 8 MiB blocks below
# would come from the heap.
big = np.ones(24 << 17); del big
before = anon_mib()
parts = [np.ones(1 << 20) for _ in range(16)]  # 16 x 8 MiB, touched
during = anon_mib()
del parts
after = anon_mib()
memory.release("the test")
print(round(during - before), round(during - after))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_blocks_above_the_threshold_go_back_to_the_system_when_freed() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grew, returned = map(int, out.stdout.split())
    assert grew >= 120, out.stdout  # 128 MiB touched
    assert returned >= 120, out.stdout  # and unmapped at once when freed, whatever the threshold rose to before
