"""The trainer's heap: freed memory goes back to the system between passes (issue #28).

Every pass over the bars allocates and frees arrays of a chunk's size (tens of MB: windows of
:data:`training.stream.CHUNK` samples) and many small ones (a group's per-ticker series). glibc's malloc keeps
what is freed: a large block (above its mmap threshold) is unmapped at once, but the threshold *rises* to the
size of each large block freed (up to 32 MiB on 64-bit), after which blocks of that size come from the heap,
and a freed heap block is only returned when it lies at the heap's top. What is left resident after pass 3
then sits under the fit's own peak (TensorFlow's model, batches and validation), and the more tickers a pass
walked, the more is left: measured, 1.4 GB resident before the fit at 2,000 tickers x 45 days.

So the trainer, on glibc (Linux), fixes the mmap threshold (which also stops it from rising): a block of
:data:`MMAP_THRESHOLD` or more is always its own mapping, unmapped when freed; and it trims the heap
(``malloc_trim``, which also releases free pages inside it) between passes. Elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 1 << 20  # bytes: blocks this large or larger are mapped on their own and unmapped on free


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def bound_heap() -> bool:
    """Fix the mmap threshold at :data:`MMAP_THRESHOLD` (no rise). True when done (glibc)."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)


def release(stage: str = "") -> bool:
    """Return the heap's free memory to the system (``malloc_trim(0)``); True when some was returned."""
    libc = _libc()
    if libc is None:
        return False
    returned = bool(libc.malloc_trim(0))
    log.debug("malloc_trim after %s: %s", stage or "a pass", "memory returned" if returned else "nothing to return")
    return returned
