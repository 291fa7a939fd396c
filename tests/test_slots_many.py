"""The window policy's slot timeline computed for many tickers at once (:func:`minutecast.window.slots_many`,
what :func:`~minutecast.window.slots` runs for one) is the per-ticker reference below, bit for bit: the
reference is the one-ticker implementation as it stood before the batched one, kept here verbatim. Any
minutes (duplicates, any order, gaps short and long), empty tickers, any number of them. Pure logic."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minutecast.window import (
    FILLED,
    GAP,
    MAX_FILL,
    MINUTE,
    N_TICKER_COLUMNS,
    PREV,
    C,
    H,
    L,
    O,
    Slots,
    V,
    slots,
    slots_many,
)

T0 = 1_764_599_400  # a minute boundary (epoch s)


def reference_slots(minutes: np.ndarray, ohlcv: np.ndarray) -> Slots:
    """The one-ticker slot timeline, as implemented before :func:`slots_many` (the reference)."""
    m = np.asarray(minutes, dtype=np.int64)
    x = np.asarray(ohlcv, dtype=np.float64).reshape(-1, 5)
    order = np.argsort(m, kind="stable")
    m, x = m[order], x[order]
    first = np.r_[True, np.diff(m) > 0] if m.size else np.zeros(0, bool)
    m, x = m[first], x[first]
    n = m.size
    if n == 0:
        return Slots(m, np.empty(0), np.empty(0, np.int64), np.empty((0, N_TICKER_COLUMNS)))
    missing = np.diff(m) // 60 - 1
    gap = np.r_[True, missing > MAX_FILL]
    fills = np.r_[0, np.where(gap[1:], 0, missing)]
    bar_slot = np.cumsum(fills + 1) - 1
    length = int(bar_slot[-1]) + 1
    slot_idx = np.arange(length)
    owner = np.searchsorted(bar_slot, slot_idx, side="right") - 1
    real = bar_slot[owner] == slot_idx
    close = x[owner, 3]
    table = np.empty((length, N_TICKER_COLUMNS))
    for col in (O, H, L):
        table[:, col] = np.where(real, x[owner, col], close)
    table[:, C] = close
    table[:, V] = np.where(real, x[owner, 4], 0.0)
    table[:, MINUTE] = m[owner] + 60 * (slot_idx - bar_slot[owner])
    table[:, FILLED] = ~real
    table[:, GAP] = real & gap[owner]
    prev = np.empty(length)
    prev[0] = close[0]
    prev[1:] = close[:-1]
    table[:, PREV] = prev
    return Slots(m, x[:, 3].copy(), bar_slot, table)


def assert_same(got: Slots, want: Slots) -> None:
    for name in ("minutes", "close", "bar_slot", "table"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name  # the same bits, NaN included


# Steps between consecutive bars (minutes): duplicates (0), filled runs (<= MAX_FILL missing) and gaps.
STEP = st.sampled_from([0, 1, 1, 1, 2, MAX_FILL, MAX_FILL + 1, MAX_FILL + 2, 60, 900])
VALUE = st.one_of(st.floats(min_value=1e-3, max_value=1e6, allow_nan=False), st.just(float("nan")))


@st.composite
def ticker(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    steps = draw(st.lists(STEP, max_size=100))
    minutes = T0 + 60 * np.cumsum(np.array([0, *steps], dtype=np.int64))[: len(steps) + (1 if steps else 0)]
    perm = draw(st.permutations(range(minutes.size)))
    minutes = minutes[np.array(perm, dtype=np.int64)] if minutes.size else minutes
    ohlcv = np.array([[draw(VALUE) for _ in range(5)] for _ in range(minutes.size)]).reshape(-1, 5)
    return minutes, ohlcv


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(ticker(), max_size=8))
def test_slots_many_is_the_per_ticker_reference_bit_for_bit(tickers: list[tuple[np.ndarray, np.ndarray]]) -> None:
    got = slots_many([m for m, _ in tickers], [x for _, x in tickers])
    assert len(got) == len(tickers)
    for (m, x), s in zip(tickers, got, strict=True):
        want = reference_slots(m, x)
        assert_same(s, want)
        assert_same(slots(m, x), want)  # the one-ticker entry point too


def test_a_ticker_does_not_fill_from_the_ticker_before_it() -> None:
    """Two tickers one minute apart: the second's first bar is a gap, not a continuation."""
    a, b = np.array([T0]), np.array([T0 + 60])
    x = np.array([[1.0, 1.0, 1.0, 1.0, 5.0]])
    _, sb = slots_many([a, b], [x, 2 * x])
    assert sb.table.shape[0] == 1 and sb.table[0, GAP] == 1 and sb.table[0, PREV] == 2.0
    assert sb.table[0, FILLED] == 0 and list(sb.bar_slot) == [0]
