"""Windows cut from stored bars: the window policy (:mod:`minutecast.window`) applied to what the window store
holds (:func:`streams.window_store.read_windows` rows, or :func:`~streams.window_store.decode_value` arrays).

The Spark partition cuts every ticker's window of a micro-batch with :func:`windows_for` (all tickers slotted in
one call, the market context in one vectorised call); tests and readers cut one with :func:`window_for`. The
store knows the bytes; this module knows none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minutecast.window import Slots, slots_many, with_market
from streams.window_store import WindowRow


def array_slots(rows: np.ndarray) -> Slots:
    """:func:`decode_value` rows -> the window policy's slot timeline (:func:`minutecast.window.slots`)."""
    return array_slots_many([rows])[0]


def array_slots_many(rows: Sequence[np.ndarray]) -> list[Slots]:
    """:func:`array_slots` of many tickers' rows in one :func:`~minutecast.window.slots_many` call."""
    return slots_many([r[:, 0].astype(np.int64) for r in rows], [r[:, 1:6] for r in rows])


def _matrix(rows: Sequence[WindowRow]) -> np.ndarray:
    """WindowRows -> (n, 6) float64 minute, open, high, low, close, volume (what :func:`array_slots` reads)."""
    return np.array([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)


def row_slots(rows: Sequence[WindowRow]) -> Slots:
    """Stored rows -> the window policy's slot timeline (:func:`minutecast.window.slots`)."""
    return array_slots(_matrix(rows))


def _as_array(rows: Sequence[WindowRow] | np.ndarray | None) -> np.ndarray | None:
    return rows if rows is None or isinstance(rows, np.ndarray) else _matrix(rows)


def windows_for(rows: Sequence[Sequence[WindowRow] | np.ndarray], minutes: Sequence[int],
                market_rows: Sequence[WindowRow] | np.ndarray | None = None) -> list[np.ndarray | None]:
    """The (WINDOW, N_COLUMNS) window ending at ``minutes[i]`` of the ticker whose stored rows are ``rows[i]``
    (WindowRows, or :func:`decode_value` rows), under the window policy, with the market ticker's context
    from ``market_rows`` (its stored rows; None or empty: no market context); None where that minute has no
    ready window. All tickers are slotted in one call and the market's context computed in one vectorised
    call for all windows (the Spark job's batch)."""
    arrays = [_as_array(r) for r in rows]
    stored = {i: a for i, a in enumerate(arrays) if a is not None and len(a)}
    own: list[np.ndarray | None] = [None] * len(arrays)
    for i, s in zip(stored, array_slots_many(list(stored.values())), strict=True):
        bars = s.ready()
        bars = bars[s.minutes[bars] == minutes[i]]
        if bars.size:
            own[i] = s.windows(bars)[0]
    have = [(i, w) for i, w in enumerate(own) if w is not None]
    out: list[np.ndarray | None] = [None] * len(own)
    if have:
        m = _as_array(market_rows)
        market = array_slots(m) if m is not None and len(m) else None
        full = with_market(np.stack([w for _, w in have]), market)
        for j, (i, _) in enumerate(have):
            out[i] = full[j]
    return out


def window_for(rows: Sequence[WindowRow] | np.ndarray, t: int,
               market_rows: Sequence[WindowRow] | np.ndarray | None = None) -> np.ndarray | None:
    """:func:`windows_for` of one ticker: its window ending at ``t``, or None."""
    return windows_for([rows], [t], market_rows)[0]


