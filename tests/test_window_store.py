"""The Redis window store (Lua) and the batch logic, against the real Redis.

Covers duplicates, out-of-order bars, count-based retention (the newest RETAIN bars, across the overnight
gap and the weekend), late bars, gaps (filled vs collapsed and marked, window policy v2), conflicting
duplicates, trimming + TTL, one round trip per batch, the scalars the script returns (the window the worker
announces equals the one a reader cuts from the whole store), re-announcement when a late-filled bar
changes a window, bad messages -> dead letters, and a property-based test: any interleaving and
duplication of the same bars, in any batches, ends in the state of one in-order delivery.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import (
    FILLED,
    GAP,
    MINUTE,
    N_COLUMNS,
    N_TICKER_COLUMNS,
    RETAIN,
    WINDOW,
    C,
    V,
    checksum,
    slots,
    window_at,
)
from streams.batch import BatchProcessor, Message, decode, readiness
from streams.window_store import WindowRow, WindowStore, read_window, read_windows
from streams.windows import row_slots, window_for
from tests.support.bars import OPEN, make_bars
from tests.support.windows import state  # OPEN: 2025-10-01 09:30 New York, the regular session's open

pytestmark = pytest.mark.integration

# Friday 2025-10-03 15:30 and Monday 2025-10-06 09:30 New York: a weekend between two sessions.
FRIDAY = int(datetime(2025, 10, 3, 19, 30, tzinfo=UTC).timestamp())
MONDAY = int(datetime(2025, 10, 6, 13, 30, tzinfo=UTC).timestamp())
TTL = 3600


def window_hash(client: object, keys: Keys, ticker: str) -> dict[bytes, tuple[float | None, ...]]:
    """The stored bars as {minute (decimal bytes): (open, high, low, close, volume, published_at)} (the newest
    row's published_at only: the layout keeps no other)."""
    return {str(r.minute).encode(): tuple(r[1:]) for r in read_window(client, keys, ticker)}  # type: ignore[arg-type]


def stored_window(store: WindowStore, ticker: str, t: int) -> np.ndarray:
    """The ticker's own columns of the window a reader cuts at ``t`` from the whole store."""
    win = window_for(read_window(store.client, store.keys, ticker), t)
    assert win is not None
    return win[:, :N_TICKER_COLUMNS]


@pytest.fixture
def store(redis_client: object, namespace: str) -> WindowStore:
    return WindowStore(redis_client, Keys(namespace), TTL)  # type: ignore[arg-type]


def test_values_round_trip_exactly_and_read_windows_is_one_pipeline(store: WindowStore, redis_client: object,
                                                                    namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 10) + make_bars("MSFT", OPEN, 5, published_at=None)
    store.apply(bars)
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    assert [r.minute for r in rows] == [b.minute for b in bars[:10]]
    assert all(r == WindowRow(b.minute, b.open, b.high, b.low, b.close, b.volume, b.published_at if i == 9 else None)
               for i, (r, b) in enumerate(zip(rows, bars[:10], strict=True)))
    b0 = bars[0]
    assert window_hash(redis_client, Keys(namespace), "AAPL")[str(OPEN).encode()] == \
        (b0.open, b0.high, b0.low, b0.close, b0.volume, None)
    many = read_windows(redis_client, Keys(namespace), ["AAPL", "MSFT", "NOPE"])  # type: ignore[arg-type]
    assert len(many["AAPL"]) == 10 and many["AAPL"] == rows
    assert [r.published_at for r in many["MSFT"]] == [None] * 5
    assert many["NOPE"] == []


def test_one_round_trip_per_batch_for_many_tickers(store: WindowStore) -> None:
    bars = [b for t in ("AAPL", "MSFT", "NVDA", "TSLA") for b in make_bars(t, OPEN, 120)]
    results, late, conflicts = store.apply(bars)
    assert store.roundtrips == 1
    assert set(results) == {"AAPL", "MSFT", "NVDA", "TSLA"} and not late and not conflicts
    assert all(r.newest == OPEN + 60 * 119 for r in results.values())


def test_duplicates_and_replays_leave_the_same_state(store: WindowStore, redis_client: object,
                                                      namespace: str) -> None:
    keys = Keys(namespace)
    bars = make_bars("AAPL", OPEN, 150)
    store.apply(bars)
    first = window_hash(redis_client, keys, "AAPL")
    store.apply(bars)  # a replay of everything
    store.apply(bars[100:] + bars[100:])  # duplicates inside one batch
    # a producer re-publishing the same bar later: only published_at differs -> a plain duplicate
    _, _, conflicts = store.apply([Bar(**{**_asdict(bars[-1]), "published_at": 2e9})])
    assert conflicts == []
    assert window_hash(redis_client, keys, "AAPL") == first
    assert len(first) == RETAIN


def _asdict(b: Bar) -> dict[str, object]:
    return {f: getattr(b, f) for f in Bar.__slots__}  # type: ignore[attr-defined]


def test_out_of_order_within_the_window_equals_in_order(redis_client: object, namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 200, skip={50, 51})
    in_order = WindowStore(redis_client, Keys(namespace + "a"), TTL)  # type: ignore[arg-type]
    shuffled = WindowStore(redis_client, Keys(namespace + "b"), TTL)  # type: ignore[arg-type]
    try:
        for i in range(0, len(bars), 17):
            in_order.apply(bars[i:i + 17])
        rng = random.Random(7)
        # Shuffle inside blocks of 40 bars (< RETAIN): out of order, but each bar is among the newest 40
        # delivered so far, so never late.
        blocks = [bars[i:i + 40] for i in range(0, len(bars), 40)]
        for block in blocks:
            rng.shuffle(block)
            for i in range(0, len(block), 9):
                _, late, _ = shuffled.apply(block[i:i + 9])
                assert late == []
        a = window_hash(redis_client, Keys(namespace + "a"), "AAPL")
        b = window_hash(redis_client, Keys(namespace + "b"), "AAPL")
        assert a == b and len(a) == RETAIN
        raw_a = redis_client.get(Keys(namespace + "a").window("AAPL"))  # type: ignore[attr-defined]
        raw_b = redis_client.get(Keys(namespace + "b").window("AAPL"))  # type: ignore[attr-defined]
        assert state(raw_a) == state(raw_b)  # the same rows, publish times and slot counters
        assert read_window(redis_client, Keys(namespace + "a"), "AAPL")[-1].minute == bars[-1].minute  # type: ignore
    finally:
        for ns in (namespace + "a", namespace + "b"):
            keys = list(redis_client.scan_iter(match=f"{ns}:*"))  # type: ignore[attr-defined]
            if keys:
                redis_client.delete(*keys)  # type: ignore[attr-defined]


def test_late_bars_are_dropped_and_counted_and_old_minutes_trimmed(store: WindowStore, redis_client: object,
                                                                    namespace: str) -> None:
    keys = Keys(namespace)
    bars = make_bars("AAPL", OPEN, 200)
    store.apply(bars)
    newest = bars[-1].minute
    late_bar = make_bars("AAPL", OPEN, 200, seed=1)[200 - RETAIN - 5]  # a changed bar for a trimmed minute
    edge_bar = bars[200 - RETAIN]  # the oldest minute still retained: a duplicate, not late
    results, late, conflicts = store.apply([late_bar, edge_bar])
    assert late == [0] and conflicts == []
    assert results["AAPL"].late == [0]
    h = window_hash(redis_client, keys, "AAPL")
    assert str(late_bar.minute).encode() not in h
    assert min(int(k) for k in h) == newest - 60 * (RETAIN - 1) and len(h) == RETAIN
    stats = redis_client.hgetall(keys.stats())  # type: ignore[attr-defined]
    assert int(stats[b"stream_late"]) == 1 and int(stats[b"stream_bars"]) == 202
    assert 0 < redis_client.ttl(keys.window("AAPL")) <= TTL  # type: ignore[attr-defined]


def test_conflicting_duplicate_keeps_the_first_and_is_reported(store: WindowStore, redis_client: object,
                                                                namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 70)
    store.apply(bars)
    changed = Bar(**{**_asdict(bars[65]), "close": bars[65].close * 1.01, "high": bars[65].high * 1.02})
    _, late, conflicts = store.apply([make_bars("AAPL", OPEN, 71)[70], changed])
    assert conflicts == [1] and late == []
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    assert next(r for r in rows if r.minute == changed.minute).close == bars[65].close


def test_retention_is_a_count_and_spans_the_weekend(store: WindowStore, redis_client: object,
                                                    namespace: str) -> None:
    keys = Keys(namespace)
    friday, monday = make_bars("AAPL", FRIDAY, 30), make_bars("AAPL", MONDAY, 70)
    # Monday first, then Friday's bars arrive: while the store holds fewer than RETAIN bars, nothing
    # is late (every delivered minute is among the newest RETAIN so far)...
    assert store.apply(monday[:50])[1] == []
    _, late, _ = store.apply(friday)
    assert late == []
    # ... then the rest of Monday trims Friday's oldest: the store keeps the newest RETAIN minutes
    store.apply(monday[50:])
    h = window_hash(redis_client, keys, "AAPL")
    kept = sorted(int(k) for k in h)
    want = sorted(b.minute for b in friday + monday)[-RETAIN:]
    assert kept == want and len(kept) == RETAIN and kept[0] < MONDAY  # Friday's last bars stay
    # a Friday minute older than the oldest kept is late now; a hole newer than it is filled, trimming one
    _, late, _ = store.apply(friday[:1])
    assert late == [0]
    hole = make_bars("AAPL", MONDAY, 71)[70]
    store.apply([hole])
    kept2 = sorted(int(k) for k in window_hash(redis_client, keys, "AAPL"))
    assert kept2 == want[1:] + [hole.minute]
    stats = redis_client.hgetall(keys.stats())  # type: ignore[attr-defined]
    assert int(stats[b"stream_late"]) == 1 and int(stats[b"stream_new"]) == 101


def _ready(store: WindowStore, bars: list[Bar]) -> tuple[int, np.ndarray, str, float | None] | None:
    """(minute, window, checksum, published_at) the store call announces, the window cut from the store."""
    results, _, _ = store.apply(bars)
    rw = results[bars[0].ticker].ready
    if rw is None:
        return None
    return rw.minute, stored_window(store, bars[0].ticker, rw.minute), rw.checksum, rw.published_at


def test_gaps_short_ones_are_filled_long_ones_collapsed_and_marked(store: WindowStore) -> None:
    # 3 missing minutes (<= MAX_FILL) inside the window: ready, the gap filled with the last close
    bars = make_bars("AAPL", OPEN, 80, skip={40, 41, 42})
    rw = _ready(store, bars)
    assert rw is not None
    t, win, cs, pub = rw
    assert t == bars[-1].minute and win.shape == (WINDOW, N_TICKER_COLUMNS) and pub == bars[-1].published_at
    gap_pos = WINDOW - (79 - 40) - 1  # index of minute 40 inside the window ending at minute 79
    assert win[gap_pos, C] == win[gap_pos - 1, C] and win[gap_pos, V] == 0.0 and win[gap_pos, FILLED] == 1
    assert cs == checksum(win)
    # 10 missing minutes: collapsed (no slots) and the bar after them marked; the window reaches over it
    bars = make_bars("MSFT", OPEN, 80, skip=set(range(40, 50)))
    rw = _ready(store, bars)
    assert rw is not None and rw[0] == bars[-1].minute
    win = rw[1]
    after = np.flatnonzero(win[:, MINUTE] == OPEN + 60 * 50)[0]
    assert win[after, GAP] == 1 and win[after, MINUTE] - win[after - 1, MINUTE] == 60 * 11
    assert not win[:, FILLED].any()
    # fewer than WINDOW slots: not ready; the 60th slot: ready at the newest bar
    assert _ready(store, make_bars("NVDA", OPEN, WINDOW - 1)) is None
    rw = _ready(store, make_bars("NVDA", OPEN, WINDOW)[WINDOW - 1:])
    assert rw is not None and rw[0] == OPEN + 60 * (WINDOW - 1)


def test_the_overnight_gap_is_bridged_and_marked(store: WindowStore, redis_client: object,
                                                 namespace: str) -> None:
    # Friday's last 30 minutes, Monday's first 40: Monday 10:09 has a window, 20 of its slots on Friday.
    friday, monday = make_bars("AAPL", FRIDAY, 30), make_bars("AAPL", MONDAY, 40)
    rw = _ready(store, friday + monday)
    assert rw is not None
    t, win, _, _ = rw
    assert t == monday[-1].minute
    assert (win[:, MINUTE] < MONDAY).sum() == WINDOW - 40
    assert win[WINDOW - 40, GAP] == 1 and win[WINDOW - 40, MINUTE] == MONDAY
    # the same window as the pure policy on the same bars, and as a reader cuts it from the store
    m, x = _arrays(friday + monday)
    np.testing.assert_array_equal(win, window_at(m, x, t)[:, :N_TICKER_COLUMNS])  # type: ignore[index]
    full = window_for(read_window(redis_client, Keys(namespace), "AAPL"), t)  # type: ignore[arg-type]
    assert full is not None and checksum(full) == checksum(win)


def _arrays(bars: list[Bar]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([b.minute for b in bars], dtype=np.int64),
            np.array([[b.open, b.high, b.low, b.close, b.volume] for b in bars]))


def test_readiness_announces_each_window_once_and_again_when_it_changes(store: WindowStore) -> None:
    bars = make_bars("AAPL", OPEN, 71, skip={65})
    results, _, _ = store.apply(bars)
    events, announced = readiness(results, ready_at=1.0)
    assert [(e.ticker, e.minute) for e in events] == [("AAPL", bars[-1].minute)]
    store.mark_announced(announced)
    first = announced["AAPL"][1]
    results, _, _ = store.apply(bars[-5:])  # a replay: same window, same checksum
    assert readiness(results, ready_at=2.0)[0] == []
    # minute 65 arrives out of order (not late): the window at the same minute changed -> announced again
    results, _, _ = store.apply([make_bars("AAPL", OPEN, 71)[65]])
    assert results["AAPL"].announced_sum == first
    events, announced = readiness(results, ready_at=3.0)
    assert [e.minute for e in events] == [bars[-1].minute] and events[0].checksum != first
    assert announced["AAPL"] == (bars[-1].minute, events[0].checksum)


def test_bad_messages_become_dead_letters_and_good_bars_still_land(store: WindowStore, redis_client: object,
                                                                    namespace: str) -> None:
    good = make_bars("AAPL", OPEN, 3)
    bad_values = [
        (b"AAPL", b"{not json", "not_json"),
        (b"MSFT", good[0].to_json(), "key_mismatch"),
        (b"AAPL", good[1].to_json().replace(b'"volume":', b'"volume":-'), "negative_volume"),
        (b"AAPL", b"\xff\xfe", "not_utf8"),
        (b"AAPL", b"[1,2]", "not_object"),
        (None, None, "not_json"),
    ]
    msgs = [Message(b"AAPL", good[0].to_json(), "bars", 0, 0)]
    for i, (k, v, _) in enumerate(bad_values):
        msgs.append(Message(k, v, "bars", 0, i + 1))
    msgs += [Message(b"AAPL", b.to_json(), "bars", 0, 10 + i) for i, b in enumerate(good[1:])]
    bars, origin, dead = decode(msgs)
    assert [b.minute for b in bars] == [b.minute for b in good] and origin == [0, 7, 8]
    assert [d.reason for d in dead] == [r for _, _, r in bad_values]
    assert [d.offset for d in dead] == [1, 2, 3, 4, 5, 6] and all(d.stage == "stream" for d in dead)
    changed = Bar(**{**_asdict(good[0]), "close": good[0].close * 1.0001,
                     "high": max(good[0].high, good[0].close * 1.0001)})
    outcome = BatchProcessor(store).process(msgs + [Message(b"AAPL", changed.to_json(), "bars", 0, 20)])
    assert [d.reason for d in outcome.deadletters][-1] == "conflicting_duplicate"
    assert outcome.deadletters[-1].offset == 20
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    assert [r.minute for r in rows] == [b.minute for b in good]
    g = good[0]
    assert rows[0] == WindowRow(g.minute, g.open, g.high, g.low, g.close, g.volume, None)  # not the newest row
    stats = redis_client.hgetall(Keys(namespace).stats())  # type: ignore[attr-defined]
    assert int(stats[b"stream_messages"]) == len(msgs) + 1


def test_window_for_and_the_returned_rows_match_the_policy(store: WindowStore, redis_client: object,
                                                           namespace: str) -> None:
    keys = Keys(namespace)
    bars = make_bars("AAPL", FRIDAY, 30) + make_bars("AAPL", MONDAY, 100, skip={70, 80, 81, 82, 83, 84, 85, 86})
    market = make_bars("SPY", FRIDAY, 30) + make_bars("SPY", MONDAY, 100)
    results, _, _ = store.apply(market + bars)
    rows = read_window(redis_client, keys, "AAPL")  # type: ignore[arg-type]
    assert len(rows) == RETAIN and [r.minute for r in rows] == sorted(r.minute for r in rows)
    t = bars[-1].minute
    mrows = read_window(redis_client, keys, "SPY")  # type: ignore[arg-type]
    win = window_for(rows, t, mrows)
    assert win is not None and win.shape == (WINDOW, N_COLUMNS)
    m, x = _arrays(bars)
    mm, mx = _arrays(market)
    np.testing.assert_array_equal(win, window_at(m, x, t, slots(mm, mx)))
    # what the worker announces (the script's scalars) is the window a reader cuts from the whole store
    rw = results["AAPL"].ready
    assert rw is not None and rw.minute == t and rw.checksum == checksum(win)
    assert rw.published_at == bars[-1].published_at
    assert window_for(rows, MONDAY + 60 * 70) is None  # that minute is not real
    assert window_for([], OPEN) is None
    assert len(row_slots(rows).minutes) == RETAIN


def _bars_at(offsets: list[int]) -> list[Bar]:
    """One bar per offset (minutes from Friday 15:30, spanning the weekend from offset 30 on)."""
    out = []
    for k in offsets:
        minute = FRIDAY + 60 * k if k < 30 else MONDAY + 60 * (k - 30)
        c = 100.0 + k / 7
        out.append(Bar("AAPL", minute, c, c * 1.001, c * 0.999, c, float(k + 1), "test", 1.75e9 + k))
    return out


@settings(max_examples=200, deadline=None, database=None,  # no example files in the work tree
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # per-example uuid namespaces instead
@given(data=st.data(), retain=st.integers(1, 12))
def test_any_interleaving_and_duplication_ends_in_the_in_order_state(redis_client: object, namespace: str,
                                                                     data: st.DataObject, retain: int) -> None:
    offsets = data.draw(st.lists(st.integers(0, 70), min_size=1, max_size=30, unique=True), label="minutes")
    bars = _bars_at(offsets)
    dups = data.draw(st.lists(st.sampled_from(range(len(bars))), max_size=15), label="duplicates")
    order = data.draw(st.permutations(list(range(len(bars))) + dups), label="delivery")
    sizes = data.draw(st.lists(st.integers(1, 8), min_size=len(order), max_size=len(order)), label="batches")
    ns = f"{namespace}p{uuid.uuid4().hex[:8]}"
    ref_ns = ns + "ref"
    client = redis_client
    try:
        ref = WindowStore(client, Keys(ref_ns), TTL, retain=retain)  # type: ignore[arg-type]
        ref.apply(sorted(bars, key=lambda b: b.minute))
        mixed = WindowStore(client, Keys(ns), TTL, retain=retain)  # type: ignore[arg-type]
        delivered = [bars[i] for i in order]
        late_minutes: list[int] = []
        i = 0
        res = None
        for size in sizes:
            if i >= len(delivered):
                break
            batch = delivered[i:i + size]
            results, late, conflicts = mixed.apply(batch)
            assert conflicts == []
            late_minutes += [batch[j].minute for j in late]
            res = results["AAPL"]
            i += size
        final = window_hash(client, Keys(ns), "AAPL")
        assert final == window_hash(client, Keys(ref_ns), "AAPL")
        newest = sorted(b.minute for b in bars)[-retain:]
        assert sorted(int(k) for k in final) == newest  # the newest `retain` minutes of everything delivered
        assert not set(late_minutes) & set(newest)  # nothing reported late belongs to the final set
        assert res is not None and res.newest == newest[-1]
        assert state(client.get(Keys(ns).window("AAPL"))) == state(client.get(Keys(ref_ns).window("AAPL")))  # type: ignore
    finally:
        for k in (Keys(ns), Keys(ref_ns)):
            stale = list(client.scan_iter(match=k.namespace_pattern()))  # type: ignore[attr-defined]
            if stale:
                client.delete(*stale)  # type: ignore[attr-defined]
