"""training/memory.py (issue #28): on glibc the trainer's freed chunks go back to the system. Run in a child
process: the mmap threshold is set once per process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from training import memory

REPO = Path(__file__).resolve().parents[1]
PRELUDE = """
import numpy as np
from training import memory

def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) / 1024

assert memory.bound_heap()
"""
CHILD = PRELUDE + """
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
# Blocks below the threshold come from the heap; freed under a block still in use they stay resident until
# release() (malloc_trim) gives their pages back: what the trainer calls before each group and chunk.
INSIDE = PRELUDE + """
before = anon_mib()
parts = [np.ones(8192) for _ in range(2048)]  # 2,048 x 64 KiB, touched: from the heap (below the threshold)
pin = np.ones(8192)  # above them: the heap's top cannot shrink past it
del parts
kept = anon_mib()
returned = memory.release("the test")
print(round(kept - before), round(kept - anon_mib()), int(returned))
"""


def child(code: str) -> list[int]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(map(int, out.stdout.split()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_blocks_above_the_threshold_go_back_to_the_system_when_freed() -> None:
    grew, returned = child(CHILD)
    assert grew >= 120  # 128 MiB touched
    assert returned >= 120  # and unmapped at once when freed, whatever the threshold rose to before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_heap_pages_under_a_live_block_go_back_when_released() -> None:
    kept, returned, trimmed = child(INSIDE)
    assert kept >= 120  # freed, but still resident: below a live block, the heap cannot shrink
    assert returned >= 120 and trimmed == 1  # release() gave the pages back


def test_released_trims_after_each_item_is_done_with(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(memory, "release", lambda stage="": calls.append(stage) or True)
    seen = []
    for item in memory.released(iter("abc"), "a chunk"):
        seen.append((item, len(calls)))
    assert seen == [("a", 0), ("b", 1), ("c", 2)] and calls == ["a chunk"] * 3
