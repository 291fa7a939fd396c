"""The trainer's heap: freed memory goes back to the system, a group and a chunk at a time (issue #28).

Every pass over the bars allocates and frees arrays of a chunk's size (tens of MB: windows of
:data:`training.stream.CHUNK` samples) and many smaller ones (a group's per-ticker series, the per-ticker parts
of a chunk: 0.1-4 MB). glibc's malloc keeps what is freed: a large block (above its mmap threshold) is unmapped
at once, but the threshold *rises* to the size of each large block freed (up to 32 MiB on 64-bit), after which
blocks of that size come from the heap; and a freed heap block is only returned when it lies at the heap's top.
The heap then spans what passes 1-3 once held at the same time (measured: 829 MiB of heap holding 117 MiB in
use at 2,000 tickers x 45 days, 346 MiB at 503), and every later pass's transient blocks land all over that
span: each page they touch stays resident once freed. So the trainer's resident set grew with the universe
(+260 MiB at 2,000 x 45 against 503 x 45, most of it in the evaluation), not with its batches and chunks.

So the trainer, on glibc (Linux), fixes the mmap threshold (which also stops it from rising) at
:data:`MMAP_THRESHOLD`: a block of 1 MiB or more is its own mapping, unmapped when freed; and it gives the
heap's free pages back (``malloc_trim``, which also releases free pages inside the heap) before each group of
bars (:class:`training.stream.Groups`) and each chunk of samples (both through :func:`released`) and between
passes. The fit runs with glibc's own ceiling (:data:`FIT_MMAP_THRESHOLD`): its batches come from the heap, as
before (its samples/s). Elsewhere (not glibc) all of this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
# Bytes, outside the fit: blocks this large or larger are mapped on their own and unmapped on free: a chunk's
# windows and inputs (16,384 windows: 51-94 MB), a group's bars and most per-ticker parts (a ticker's series,
# its samples of a chunk). (4 MiB measured 2,835 MiB at 2,000 x 45 against 2,576 at 503 x 45: 1.10 x.)
MMAP_THRESHOLD = 1 << 20
# During the fit: glibc's own ceiling (what its threshold rises to), as before: a training batch's inputs
# (512 x 60 x 13 float32: 1.6 MB, read every step) come from the heap, no fresh pages each step.
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


def released(items: Iterable[T], stage: str = "a chunk") -> Iterator[T]:
    """``items``, with :func:`release` each time the next is asked for (after the last one too): what the
    previous item's work freed goes back before the next is made."""
    for item in items:
        yield item
        release(stage)
