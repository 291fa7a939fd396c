"""Unit tests of the window policy v2 (minutecast/window.py) and the shared feature code (pure numpy)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minutecast.features import N_FEATURES, Scaler, make_inputs, make_targets, to_log_moves
from minutecast.window import (
    CLOSE_MIN,
    COLUMNS,
    EARLY_CLOSE_MIN,
    FILLED,
    GAP,
    HORIZON,
    MAX_FILL,
    MINUTE,
    MKT_BAR,
    MKT_RANGE,
    MKT_RET,
    N_COLUMNS,
    N_TICKER_COLUMNS,
    PREV,
    SESSION_TZ,
    WINDOW,
    C,
    H,
    L,
    O,
    V,
    checksum,
    close_minute,
    from_local,
    local_minutes,
    market_columns,
    minute_of_day,
    ready_windows,
    regular_hours,
    session_ids,
    shift_days,
    slots,
    window_at,
    with_market,
)

OPEN = 1_759_325_400  # 2025-10-01 09:30 New York (13:30 UTC), a Wednesday


def ny(text: str) -> int:
    """'2025-10-03 15:30' New York -> epoch seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=SESSION_TZ).timestamp())


def bars(n: int, start: int = OPEN, skip: set[int] | frozenset[int] = frozenset(),
         base: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 1-minute offsets from ``start`` minus ``skip``: (minutes (k,), ohlcv (k, 5)), all values distinct."""
    idx = np.array([i for i in range(n) if i not in skip], dtype=np.int64)
    close = base + 0.01 * idx + 0.001 * np.sin(idx)
    ohlcv = np.column_stack([close - 0.003, close + 0.02, close - 0.02, close, 1000.0 + idx])
    return start + 60 * idx, ohlcv


def test_sessions_follow_new_york_dates() -> None:
    # 23:59 and 00:00 New York on either side of midnight are different days (UTC-4 in October).
    before = ny("2025-10-01 23:59")
    assert session_ids(np.array([before]))[0] + 1 == session_ids(np.array([before + 60]))[0]


def test_consecutive_bars_are_one_slot_each() -> None:
    m, x = bars(10)
    s = slots(m, x)
    np.testing.assert_array_equal(s.bar_slot, np.arange(10))
    np.testing.assert_array_equal(s.table[:, [O, H, L, C, V]], x)
    np.testing.assert_array_equal(s.table[:, MINUTE], m)
    assert not s.table[:, FILLED].any()
    np.testing.assert_array_equal(s.table[:, GAP], [1] + [0] * 9)  # the first bar: nothing known before it
    np.testing.assert_array_equal(s.table[:, PREV], np.r_[x[0, 3], x[:-1, 3]])
    assert s.table.shape == (10, N_TICKER_COLUMNS) and len(COLUMNS) == N_COLUMNS


def test_short_gaps_are_filled() -> None:
    m, x = bars(20, skip=set(range(5, 5 + MAX_FILL)))
    s = slots(m, x)
    assert len(s.table) == 20  # every minute has a slot
    fill = s.table[5:5 + MAX_FILL]
    last = x[4, 3]
    assert np.all(fill[:, [O, H, L, C]] == last) and np.all(fill[:, V] == 0) and np.all(fill[:, FILLED] == 1)
    np.testing.assert_array_equal(fill[:, MINUTE], m[4] + 60 * np.arange(1, MAX_FILL + 1))
    after = s.table[5 + MAX_FILL]
    assert after[GAP] == 0 and after[FILLED] == 0 and after[PREV] == last and after[C] == x[5, 3]


def test_long_gaps_are_collapsed_and_marked() -> None:
    m, x = bars(20, skip=set(range(5, 5 + MAX_FILL + 1)))
    s = slots(m, x)
    assert len(s.table) == len(m) == 20 - MAX_FILL - 1  # no slots for the missing minutes
    np.testing.assert_array_equal(s.bar_slot, np.arange(len(m)))
    after = s.table[5]
    assert after[GAP] == 1 and after[PREV] == x[4, 3]  # its return crosses the gap
    assert after[MINUTE] - s.table[4, MINUTE] == 60 * (MAX_FILL + 2)
    assert not s.table[:, FILLED].any() and s.table[:, GAP].sum() == 2  # first bar + the one after the gap


def test_first_window_needs_window_slots_and_fills_count() -> None:
    m, x = bars(70)
    w = ready_windows(m, x)
    assert w.ends[0] == OPEN + 60 * (WINDOW - 1) and len(w.ends) == 70 - WINDOW + 1
    np.testing.assert_array_equal(w.values[0][:, C], x[:WINDOW, 3])
    assert w.values.shape == (len(w.ends), WINDOW, N_COLUMNS)
    # 3 filled minutes early on: the 60th slot is 3 bars earlier
    m, x = bars(70, skip={10, 11, 12})
    assert ready_windows(m, x).ends[0] == OPEN + 60 * (WINDOW - 1)
    assert slots(m, x).ready()[0] == WINDOW - 1 - 3


def test_windows_reach_back_across_the_overnight_gap_and_weekend() -> None:
    # Friday's last 30 regular minutes, Monday's first 40: the window at Monday 10:09 holds both.
    fri, mon = bars(30, start=ny("2025-10-03 15:30")), bars(40, start=ny("2025-10-06 09:30"), base=101.0)
    m, x = np.r_[fri[0], mon[0]], np.r_[fri[1], mon[1]]
    w = ready_windows(m, x)
    assert w.ends[0] == ny("2025-10-06 09:59") and w.ends[-1] == ny("2025-10-06 10:09")
    last = w.values[-1]
    np.testing.assert_array_equal(last[:, MINUTE], m[-WINDOW:])
    first_monday = WINDOW - 40
    assert last[first_monday, GAP] == 1 and last[:, GAP].sum() == 1  # the weekend, marked once
    assert last[first_monday, PREV] == fri[1][-1, 3]  # the gap's return: Friday's last close -> Monday's
    assert not last[:, FILLED].any()
    assert window_at(m, x, ny("2025-10-06 09:35")) is None  # only 36 slots by then


def test_order_and_duplicates_do_not_matter_and_the_first_value_wins() -> None:
    m, x = bars(90, skip={20, 40, 41, 42, 43, 44, 45, 46})
    rng = np.random.default_rng(1)
    p = rng.permutation(len(m))
    ref = ready_windows(m, x)
    changed = x[:15] * 1.01
    # duplicates with other values delivered after the originals lose ...
    later = ready_windows(np.r_[m[p], m[:15]], np.r_[x[p], changed])
    np.testing.assert_array_equal(later.ends, ref.ends)
    np.testing.assert_array_equal(later.values, ref.values)
    np.testing.assert_array_equal(later.targets, ref.targets)
    # ... and win when delivered first
    first = slots(np.r_[m[:15], m[p]], np.r_[changed, x[p]])
    np.testing.assert_array_equal(first.table[first.bar_slot[:15]][:, [O, H, L, C, V]], changed)


@settings(max_examples=100, deadline=None, database=None)  # no example files in the work tree
@given(st.lists(st.integers(0, 150), min_size=1, max_size=120), st.randoms(use_true_random=False))
def test_slots_depend_only_on_the_set_of_bars(offsets: list[int], rnd: object) -> None:
    # Bars at arbitrary minute offsets (gaps of every length), any order, any duplication.
    uniq = np.array(sorted(set(offsets)), dtype=np.int64)
    m, x = OPEN + 60 * uniq, np.column_stack([100 + uniq * 0.1] * 4 + [uniq * 1.0])
    shuffled = list(offsets)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    sh = np.array(shuffled, dtype=np.int64)
    a = slots(m, x)
    b = slots(OPEN + 60 * sh, np.column_stack([100 + sh * 0.1] * 4 + [sh * 1.0]))
    np.testing.assert_array_equal(a.table, b.table)
    np.testing.assert_array_equal(a.bar_slot, b.bar_slot)


def test_targets_are_exactly_horizon_minutes_ahead() -> None:
    m, x = bars(80, skip={WINDOW - 1 + HORIZON})  # the bar 5 minutes after the first ready one is missing
    w = ready_windows(m, x)
    t0 = OPEN + 60 * (WINDOW - 1)
    assert w.ends[0] == t0 and np.isnan(w.targets[0])  # a filled slot there does not count
    k = np.flatnonzero(w.ends == t0 + 60)[0]
    assert w.targets[k] == x[m == t0 + 60 * (1 + HORIZON), 3][0]
    assert np.isnan(w.targets[-1])  # nothing 5 minutes after the last bar
    # across a collapsed gap: the next bar is not "5 minutes later"
    fri, mon = bars(60, start=ny("2025-10-03 15:00")), bars(10, start=ny("2025-10-06 09:30"))
    w = ready_windows(np.r_[fri[0], mon[0]], np.r_[fri[1], mon[1]])
    last_friday = w.ends == ny("2025-10-03 15:59")
    assert last_friday.sum() == 1 and np.isnan(w.targets[last_friday]).all()


def test_market_context_uses_only_market_bars_up_to_t_within_the_last_window_minutes() -> None:
    fri, mon = bars(30, start=ny("2025-10-03 15:30")), bars(40, start=ny("2025-10-06 09:30"))
    m, x = np.r_[fri[0], mon[0]], np.r_[fri[1], mon[1]]
    # the market traded every minute, also 15 minutes beyond the ticker's last bar
    mkt_m = np.r_[bars(30, start=ny("2025-10-03 15:30"), base=500.0)[0], bars(55, start=ny("2025-10-06 09:30"))[0]]
    mkt_x = np.column_stack([500.0 + np.arange(len(mkt_m))] * 4 + [np.ones(len(mkt_m))])
    mkt_x[:, 1] += 0.5  # high
    mkt_x[:, 2] -= 0.5  # low
    full, upto = slots(mkt_m, mkt_x), slots(mkt_m[mkt_m <= m[-1]], mkt_x[mkt_m <= m[-1]])
    t = int(m[-1])
    win = window_at(m, x, t, full)
    assert win is not None and win.shape == (WINDOW, N_COLUMNS)
    np.testing.assert_array_equal(win, window_at(m, x, t, upto))  # later market bars change nothing
    inside = win[:, MINUTE] > t - 60 * WINDOW
    assert inside.sum() == 40  # Friday's slots are older than the last 60 minutes: no context
    assert not win[~inside, MKT_RET:].any()
    assert np.all(win[inside, MKT_BAR] == 1)
    close = dict(zip(mkt_m.tolist(), mkt_x[:, 3], strict=True))
    mins = win[inside, MINUTE].astype(np.int64)
    expect = [np.log(close[mm] / close[mm - 60]) if mm - 60 in close else 0.0 for mm in mins]
    assert expect[0] == 0.0  # Monday 09:30: the as-of close a minute before is Friday's, days old
    np.testing.assert_allclose(win[inside, MKT_RET], expect)
    np.testing.assert_allclose(win[inside, MKT_RANGE], [np.log((close[mm] + 0.5) / (close[mm] - 0.5)) for mm in mins])
    # no market data: zeros
    assert not window_at(m, x, t)[:, MKT_RET:].any()  # type: ignore[index]


def test_market_staleness_is_bounded_by_max_fill() -> None:
    q = OPEN
    mkt_m = np.array([q, q + 60 * (MAX_FILL + 1), q + 60 * (2 * MAX_FILL + 4)])
    closes = np.array([100.0, 101.0, 102.0])
    mkt = slots(mkt_m, np.column_stack([closes] * 4 + [np.ones(3)]))
    # slot minutes of a (1, 2) "window" ending at the last market bar
    out = market_columns(mkt_m[None, 1:], int(mkt_m[-1]), mkt)
    # bar 1: its previous minute's as-of close is MAX_FILL minutes old -> still counts
    assert np.isclose(out[0, 0, 0], np.log(101.0 / 100.0))
    # bar 2: its previous minute's as-of close is MAX_FILL + 2 minutes old -> stale, no return
    assert out[0, 1, 0] == 0.0 and out[0, 1, 2] == 1.0
    # a filled minute one after a bar: as-of closes equal -> a zero return, no bar, no range
    fill = market_columns(np.array([[q + 60]]), q + 60, mkt)
    assert fill[0, 0].tolist() == [0.0, 0.0, 0.0]


def test_regular_hours_and_close_minute_with_an_early_close() -> None:
    day = [ny("2025-10-01 09:29"), ny("2025-10-01 09:30"), ny("2025-10-01 15:59"), ny("2025-10-01 16:00")]
    assert regular_hours(np.array(day)).tolist() == [False, True, True, False]
    # any date counts (a replay shifted to now may put a recorded session on a Saturday)
    assert regular_hours(np.array([ny("2025-10-04 10:00")]))[0]
    # the day after Thanksgiving 2025 (Nov 27) closes at 13:00, as do Christmas Eve and July 3
    early = [ny("2025-11-28 12:59"), ny("2025-11-28 13:00")]
    assert regular_hours(np.array(early)).tolist() == [True, False]
    days = ["2025-11-28", "2025-12-24", "2025-07-03", "2025-11-26", "2025-12-26"]
    assert close_minute(np.array([ny(f"{d} 10:00") for d in days])).tolist() == [EARLY_CLOSE_MIN] * 3 + [CLOSE_MIN] * 2


def test_checksum_excludes_market_columns() -> None:
    m, x = bars(61)
    w = ready_windows(m, x).values[-1]
    other = w.copy()
    other[:, MKT_RET:] = 0.5
    assert checksum(w) == checksum(other) == checksum(w[:, :N_TICKER_COLUMNS])
    other[3, C] += 0.01
    assert checksum(other) != checksum(w)


def test_window_at_matches_the_batch() -> None:
    m, x = bars(90, skip={30})
    w = ready_windows(m, x)
    np.testing.assert_array_equal(window_at(m, x, int(w.ends[7])), w.values[7])
    assert window_at(m, x, OPEN) is None and window_at(m, x, OPEN + 60 * 30) is None
    np.testing.assert_array_equal(with_market(slots(m, x).windows(slots(m, x).ready()), None), w.values)


def test_features_round_trip_to_log_moves() -> None:
    m, x = bars(150, skip={70, 71})
    w = ready_windows(m, x)
    ok = ~np.isnan(w.targets)
    scaler = Scaler.fit(w.values[ok], w.targets[ok])
    assert Scaler.from_dict(scaler.to_dict()) == scaler
    inputs = make_inputs(w.values[ok], scaler)
    assert inputs.shape == (ok.sum(), WINDOW, N_FEATURES) and inputs.dtype == np.float32
    assert np.isfinite(inputs).all()
    y = make_targets(w.values[ok], w.targets[ok], scaler)
    moves = to_log_moves(y[:, None], scaler)[:, 0]
    np.testing.assert_allclose(moves, np.log(w.targets[ok] / w.values[ok][:, -1, C]), rtol=1e-5)


def test_shift_days_keeps_new_york_wall_clock_across_both_dst_changes() -> None:
    def utc(y: int, mo: int, d: int, h: int, mi: int) -> int:
        return int(datetime(y, mo, d, h, mi, tzinfo=UTC).timestamp())

    # 2025-03-07 (EST, 09:30 = 14:30 UTC) shifted 7 days into EDT: 2025-03-14 09:30 = 13:30 UTC
    assert shift_days(np.array([utc(2025, 3, 7, 14, 30)]), 7).tolist() == [utc(2025, 3, 14, 13, 30)]
    # 2025-10-31 (EDT, 16:00 = 20:00 UTC) shifted 7 days into EST: 2025-11-07 16:00 = 21:00 UTC
    assert shift_days(np.array([utc(2025, 10, 31, 20, 0)]), 7).tolist() == [utc(2025, 11, 7, 21, 0)]
    # backwards too, and a whole session keeps every minute of day and its weekday (a multiple of 7 days)
    day = utc(2025, 11, 7, 14, 30) + 60 * np.arange(390)
    back = shift_days(day, -14)
    assert (minute_of_day(back) == minute_of_day(day)).all()
    assert (session_ids(day) - session_ids(back) == 14).all()
    assert int(back[0]) == utc(2025, 10, 24, 13, 30)
    # a UTC-seconds shift would have moved it an hour: the bug this replaces
    assert (minute_of_day(day - 14 * 86400) != minute_of_day(day)).all()
    # from_local inverts local_minutes (the repeated fall-back hour maps to its first occurrence)
    m = utc(2025, 1, 1, 0, 0) + 3600 * np.arange(24 * 400)
    once = np.ones_like(m, dtype=bool)
    once[np.flatnonzero(np.diff(local_minutes(m)) == 0) + 1] = False  # the hour that repeats
    assert (from_local(local_minutes(m))[once] == m[once]).all()
