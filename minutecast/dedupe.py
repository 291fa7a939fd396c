"""First value wins: what a (ticker, minute) seen more than once keeps, written down once.

Serving's window store (its Lua script, ``streams/window_lua.py``) applies the rule record by record as
bars arrive: a minute keeps its FIRST stored value; a later record of the same minute with the same OHLCV is
a no-op (a replay, a producer re-publishing: ``published_at`` does not count), one with other OHLCV is a
*conflicting duplicate*, not stored and dead-lettered as ``conflicting_duplicate``. :func:`first_wins` is
that rule as a pure function over records in arrival order (a partition's offset order), so training
reads the history the store holds. "The same OHLCV" means what the store compares: the ``repr`` strings of
the floats, i.e. equal values with the same sign (0.0 and -0.0 differ), and NaN equal to NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FirstWins:
    """Indexes into the records given, each ascending (arrival order)."""

    keep: np.ndarray  # (k,) int64: each (ticker, minute)'s first record, the one that stays
    duplicates: np.ndarray  # int64: later records equal to the first one (no-ops)
    conflicts: np.ndarray  # int64: later records with other values (serving dead-letters them)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise: every value equal as the store compares them (repr strings)."""
    nan = np.isnan(a) & np.isnan(b)
    return (nan | ((a == b) & (np.signbit(a) == np.signbit(b)))).all(axis=1)


def first_wins(minutes: np.ndarray, values: np.ndarray, tickers: np.ndarray | None = None) -> FirstWins:
    """The first-value-wins rule over records in arrival order.

    ``minutes`` (n,) epoch seconds; ``values`` (n, k) the compared values (OHLCV: k = 5); ``tickers`` (n,)
    the records' tickers, or None when all records are one ticker's. Pure numpy, O(n log n).
    """
    m = np.asarray(minutes, dtype=np.int64).reshape(-1)
    n = m.size
    if n == 0:
        empty = np.empty(0, np.int64)
        return FirstWins(empty, empty, empty)
    x = np.asarray(values, dtype=np.float64).reshape(n, -1)
    if tickers is None:
        order = np.argsort(m, kind="stable")  # stable: among equal minutes, arrival order stays
        head = np.r_[True, m[order][1:] != m[order][:-1]]
    else:
        _, codes = np.unique(np.asarray(tickers), return_inverse=True)
        codes = codes.reshape(-1)
        order = np.lexsort((m, codes))  # lexsort is stable too
        sm, sc = m[order], codes[order]
        head = np.r_[True, (sm[1:] != sm[:-1]) | (sc[1:] != sc[:-1])]
    # For each sorted position, the record that came first for its key.
    first = order[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
    later = order[~head]
    same = _same(x[later], x[first[~head]])
    return FirstWins(np.sort(order[head]), np.sort(later[same]), np.sort(later[~same]))
