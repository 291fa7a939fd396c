"""The window policy: which 60-minute windows exist, written down once for streams and training.

Policy
------
* A window ending at minute ``t`` holds the 60 minutes ``t-59 .. t`` of one ticker as ``(close, volume)``.
* Sessions: a window never spans two New York calendar dates (a trading day, pre- and post-market
  included). Overnight gaps, weekends and holidays are therefore never filled.
* Gaps: a run of up to :data:`MAX_FILL` missing minutes inside a session is forward-filled
  (close = last close, volume = 0): sparse pre/post-market and brief halts. A longer gap makes every
  window that contains it not ready.
* A window is *ready* at ``t`` when the bar at ``t`` itself is real (not filled), all 60 minutes are
  real or fillable, and ``t-59`` is not before the first bar of the session.
* Training target: the close of minute ``t + HORIZON``; only a real bar in the same session counts.

Everything here is pure numpy so the Faust app, the Spark job and the trainer run the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

WINDOW = 60  # minutes in one model input
HORIZON = 5  # minutes ahead we forecast
MAX_FILL = 5  # longest run of missing minutes that is forward-filled
# A window-ready event names the newest ready window of a ticker no more than REACH minutes before its
# newest bar: when the last minutes are sparse (post-market, a fast backfill batch ending in a gap) the
# latest ready window is still announced instead of none.
REACH = 20
# Minutes of state kept per ticker: a window plus its fill look-back plus REACH plus slack for a Spark
# job that reads a few minutes behind the Faust app.
RETAIN = WINDOW + MAX_FILL + REACH + 5
SESSION_TZ = ZoneInfo("America/New_York")


@lru_cache(maxsize=65536)
def _utc_offset_s(hour: int) -> int:
    """New York's UTC offset (seconds) during the UTC hour starting at ``hour * 3600``."""
    off = datetime.fromtimestamp(hour * 3600, UTC).astimezone(SESSION_TZ).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def session_ids(minutes: np.ndarray) -> np.ndarray:
    """Epoch seconds -> New York calendar day number (days since 1970-01-01, local)."""
    minutes = np.asarray(minutes, dtype=np.int64)
    hours = minutes // 3600
    uniq, inv = np.unique(hours, return_inverse=True)
    offsets = np.fromiter((_utc_offset_s(int(h)) for h in uniq), dtype=np.int64, count=len(uniq))
    return (minutes + offsets[inv]) // 86400


@dataclass(frozen=True)
class Windows:
    """Ready windows of one ticker. ``values[i]`` is the (WINDOW, 2) [close, volume] window ending at
    ``ends[i]``; ``targets[i]`` is the close at ``ends[i] + HORIZON`` minutes (NaN when that bar is
    missing, or when targets were not asked for)."""

    ends: np.ndarray  # (N,) int64 epoch seconds
    values: np.ndarray  # (N, WINDOW, 2) float64
    targets: np.ndarray  # (N,) float64


def ready_windows(minutes: np.ndarray, close: np.ndarray, volume: np.ndarray,
                  *, only_end: int | None = None) -> Windows:
    """All ready windows of one ticker's bars (any order, duplicates resolved as the last one).

    ``only_end`` keeps just the window ending at that minute (serving). Shapes: inputs (n,).
    """
    m = np.asarray(minutes, dtype=np.int64) // 60
    c = np.asarray(close, dtype=np.float64)
    v = np.asarray(volume, dtype=np.float64)
    empty = Windows(np.empty(0, np.int64), np.empty((0, WINDOW, 2)), np.empty(0))
    if m.size == 0:
        return empty
    order = np.argsort(m, kind="stable")
    m, c, v = m[order], c[order], v[order]
    sess = session_ids(m * 60)
    ends: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    tgts: list[np.ndarray] = []
    # Sessions are contiguous in time order: split at each change of day.
    cuts = np.flatnonzero(np.diff(sess)) + 1
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, m.size], strict=True):
        sm, sc, sv = m[lo:hi], c[lo:hi], v[lo:hi]
        if only_end is not None and not (sm[0] <= only_end // 60 <= sm[-1]):
            continue
        length = int(sm[-1] - sm[0]) + 1
        if length < WINDOW:
            continue
        pos = sm - sm[0]
        real = np.zeros(length, dtype=bool)
        real[pos] = True
        grid_c = np.full(length, np.nan)
        grid_c[pos] = sc
        grid_v = np.zeros(length)
        grid_v[pos] = sv
        idx = np.arange(length)
        last = np.maximum.accumulate(np.where(real, idx, -1))
        fillable = (idx - last) <= MAX_FILL  # last >= 0 always: the grid starts at a real bar
        filled_c = np.where(fillable, grid_c[np.maximum(last, 0)], np.nan)
        bad = np.concatenate([[0], np.cumsum(~fillable)])
        end_idx = idx[WINDOW - 1:]
        ok = real[end_idx] & ((bad[end_idx + 1] - bad[end_idx + 1 - WINDOW]) == 0)
        if only_end is not None:
            ok &= (end_idx + sm[0]) == only_end // 60
        sel = end_idx[ok]
        if sel.size == 0:
            continue
        stacked = np.stack([filled_c, grid_v], axis=1)  # (length, 2)
        view = np.lib.stride_tricks.sliding_window_view(stacked, WINDOW, axis=0)  # (L-59, 2, WINDOW)
        vals.append(np.transpose(view[sel - (WINDOW - 1)], (0, 2, 1)))
        tgt = np.full(sel.size, np.nan)
        ahead = sel + HORIZON
        inside = ahead < length
        has = np.zeros(sel.size, dtype=bool)
        has[inside] = real[ahead[inside]]
        tgt[has] = grid_c[ahead[has]]
        tgts.append(tgt)
        ends.append((sel + sm[0]) * 60)
    if not ends:
        return empty
    return Windows(np.concatenate(ends), np.concatenate(vals), np.concatenate(tgts))


def window_at(rows: Iterable[tuple[int, float, float]], t: int) -> np.ndarray | None:
    """The (WINDOW, 2) window ending at ``t`` from (minute, close, volume) rows, or None if not ready."""
    arr = np.array(list(rows), dtype=np.float64).reshape(-1, 3)
    w = ready_windows(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], only_end=t)
    return w.values[0] if len(w.ends) else None


def checksum(window: np.ndarray) -> str:
    """A short digest of a window's values: the window's version in window-ready events."""
    return hashlib.blake2b(np.ascontiguousarray(window, dtype=np.float64).tobytes(), digest_size=8).hexdigest()
