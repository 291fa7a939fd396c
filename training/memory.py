"""The trainer's heap: freed memory goes back to the system between passes (issue #28).

Every pass over the bars allocates and frees arrays of a chunk's size (tens of MB: windows of
:data:`training.stream.CHUNK` samples) and many small ones (a group's per-ticker series). glibc's malloc keeps
what is freed: a large block (above its mmap threshold) is unmapped at once, but the threshold *rises* to the
size of each large block freed (up to 32 MiB on 64-bit), after which blocks of that size come from the heap,
and a freed heap block is only returned when it lies at the heap's top. What is left resident after pass 3
then sits under the fit's own peak (TensorFlow's model, batches and validation), and the more tickers a pass
walked, the more is left: measured, 1.4 GB resident before the fit at 2,000 tickers x 45 days.

So the trainer, on glibc (Linux), fixes the mmap threshold (which also stops it from rising): a block of
:data:`MMAP_THRESHOLD` (4 MiB) or more is always its own mapping, unmapped when freed; and it trims the heap
(``malloc_trim``, which also releases free pages inside it) between passes. The fit runs with glibc's own
ceiling (:data:`FIT_MMAP_THRESHOLD`), as before. Elsewhere (not glibc) all of this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
# Bytes: blocks this large or larger are mapped on their own and unmapped on free. Above a training batch's
# inputs (512 x 60 x 13 float32: 1.6 MB, read for every step: from the heap, no fresh pages each step), below
# a chunk's windows and inputs (16,384 windows: 51-94 MB) and a group's bars.
MMAP_THRESHOLD = 4 << 20
# During the fit: glibc's own ceiling (what its threshold rises to), as before: the fit's allocations come from
# the heap, as they did.
FIT_MMAP_THRESHOLD = 32 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def bound_heap(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix the mmap threshold at ``threshold`` bytes (no rise). True when done (glibc)."""
    libc = _libc()
    if libc is None:
        return False
    # A fixed mmap threshold also freezes the trim threshold at its 128 KiB default (glibc moves it to twice
    # the mmap threshold only while that one rises): the heap's top would then be given back and taken again
    # on every step of the fit (measured: ~15% of its samples/s). Twice the threshold, as glibc's own rule.
    return libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2 * threshold) == 1


def release(stage: str = "") -> bool:
    """Return the heap's free memory to the system (``malloc_trim(0)``); True when some was returned."""
    libc = _libc()
    if libc is None:
        return False
    returned = bool(libc.malloc_trim(0))
    log.debug("malloc_trim after %s: %s", stage or "a pass", "memory returned" if returned else "nothing to return")
    return returned
