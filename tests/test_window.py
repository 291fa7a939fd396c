"""Unit tests of the window policy and the shared feature code (pure numpy)."""

from __future__ import annotations

import numpy as np

from minutecast.features import Scaler, make_inputs, make_targets, to_price
from minutecast.window import HORIZON, MAX_FILL, WINDOW, ready_windows, session_ids, window_at

OPEN = 1_759_325_400  # 2025-10-01 09:30 New York (13:30 UTC)


def bars(n: int, start: int = OPEN, skip: set[int] = frozenset()) -> tuple[np.ndarray, ...]:
    idx = np.array([i for i in range(n) if i not in skip])
    return start + 60 * idx, 100.0 + idx, 1000.0 + idx


def test_sessions_follow_new_york_dates() -> None:
    # 23:59 and 00:00 New York on either side of midnight are different sessions (UTC-4 in October).
    before = 1_759_377_540  # 2025-10-01 23:59 EDT
    assert session_ids(np.array([before]))[0] + 1 == session_ids(np.array([before + 60]))[0]


def test_first_ready_window_needs_sixty_minutes() -> None:
    m, c, v = bars(70)
    w = ready_windows(m, c, v)
    assert w.ends[0] == OPEN + 60 * (WINDOW - 1)
    assert len(w.ends) == 70 - WINDOW + 1
    np.testing.assert_array_equal(w.values[0, :, 0], c[:WINDOW])
    assert w.targets[0] == c[WINDOW - 1 + HORIZON]
    assert np.isnan(w.targets[-1])  # no bar 5 minutes after the last one


def test_short_gaps_are_forward_filled_long_ones_are_not() -> None:
    m, c, v = bars(70, skip=set(range(10, 10 + MAX_FILL)))
    w = ready_windows(m, c, v)
    first = w.values[0]
    assert first[10 + MAX_FILL - 1, 0] == c[9] and first[10, 1] == 0.0
    m, c, v = bars(100, skip=set(range(10, 10 + MAX_FILL + 1)))
    w = ready_windows(m, c, v)
    first_after_gap = 10 + MAX_FILL + 1
    assert w.ends.min() == OPEN + 60 * (first_after_gap + WINDOW - 1)


def test_windows_never_span_sessions() -> None:
    # 30 bars before midnight New York and 40 after: no window of 60 fits in either day.
    m, c, v = bars(70, start=1_759_377_540 - 60 * 29)
    assert len(ready_windows(m, c, v).ends) == 0


def test_order_and_duplicates_do_not_matter() -> None:
    m, c, v = bars(80)
    rng = np.random.default_rng(1)
    p = rng.permutation(len(m))
    a, b = ready_windows(m, c, v), ready_windows(m[p], c[p], v[p])
    np.testing.assert_array_equal(a.ends, b.ends)
    np.testing.assert_array_equal(a.values, b.values)


def test_window_at_matches_batch() -> None:
    m, c, v = bars(90)
    w = ready_windows(m, c, v)
    t = int(w.ends[7])
    np.testing.assert_array_equal(window_at(zip(m, c, v, strict=True), t), w.values[7])
    assert window_at(zip(m, c, v, strict=True), OPEN) is None


def test_features_round_trip_to_price() -> None:
    m, c, v = bars(120)
    w = ready_windows(m, c, v)
    ok = ~np.isnan(w.targets)
    scaler = Scaler.fit(w.values[ok], w.targets[ok])
    x = make_inputs(w.values[ok], scaler)
    assert x.shape == (ok.sum(), WINDOW, 2) and x.dtype == np.float32
    assert np.all(x[:, -1, 0] == 0)  # relative to the last close
    y = make_targets(w.values[ok], w.targets[ok], scaler)
    np.testing.assert_allclose(to_price(y, w.values[ok][:, -1, 0], scaler), w.targets[ok], rtol=1e-5)
    assert Scaler.from_dict(scaler.to_dict()) == scaler
