"""The Redis window store (Lua) and the batch logic, against the real Redis.

Covers duplicates, out-of-order bars, gaps (forward fill vs not ready), late bars, session boundaries,
conflicting duplicates, trimming + TTL, one round trip per batch, and bad messages -> dead letters.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import RETAIN, WINDOW, checksum
from streams.faust_app import BatchProcessor, Message, decode, readiness
from streams.state import WindowRow, WindowStore, encode_value, read_window, read_windows, window_for

pytestmark = pytest.mark.integration

# 2025-10-01 09:30 New York (13:30 UTC): the regular session's open.
OPEN = int(datetime(2025, 10, 1, 13, 30, tzinfo=UTC).timestamp())
TTL = 3600


def make_bars(ticker: str, start: int, n: int, skip: set[int] | frozenset[int] = frozenset(),
              seed: int = 0, published_at: float | None = 1.75e9) -> list[Bar]:
    """``n`` consecutive 1-minute bars from ``start`` (epoch s), minus the offsets in ``skip``.
    Prices are awkward floats on purpose (repr round-trip)."""
    rng = random.Random(f"{ticker}{seed}")
    out = []
    price = 100.0 + rng.random() * 50
    for i in range(n):
        price *= 1 + (rng.random() - 0.5) / 500
        if i in skip:
            continue
        o, c = price, price * (1 + (rng.random() - 0.5) / 1000)
        out.append(Bar(ticker, start + 60 * i, o, max(o, c) * 1.0001, min(o, c) * 0.9999, c,
                       float(rng.randint(100, 90_000)), "test", published_at))
    return out


def window_hash(client: object, keys: Keys, ticker: str) -> dict[bytes, bytes]:
    return client.hgetall(keys.window(ticker))  # type: ignore[attr-defined,no-any-return]


@pytest.fixture
def store(redis_client: object, namespace: str) -> WindowStore:
    return WindowStore(redis_client, Keys(namespace), TTL)  # type: ignore[arg-type]


def test_values_round_trip_exactly_and_read_windows_is_one_pipeline(store: WindowStore, redis_client: object,
                                                                    namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 10) + make_bars("MSFT", OPEN, 5, published_at=None)
    store.apply(bars)
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    assert [r.minute for r in rows] == [b.minute for b in bars[:10]]
    assert all(r.close == b.close and r.volume == b.volume and r.published_at == b.published_at
               for r, b in zip(rows, bars[:10], strict=True))
    assert window_hash(redis_client, Keys(namespace), "AAPL")[str(OPEN).encode()] == encode_value(bars[0]).encode()
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
        # Shuffle inside blocks of 40 minutes (< RETAIN): out of order, but never late.
        blocks = [bars[i:i + 40] for i in range(0, len(bars), 40)]
        for block in blocks:
            rng.shuffle(block)
            for i in range(0, len(block), 9):
                _, late, _ = shuffled.apply(block[i:i + 9])
                assert late == []
        a = window_hash(redis_client, Keys(namespace + "a"), "AAPL")
        b = window_hash(redis_client, Keys(namespace + "b"), "AAPL")
        assert a == b and len(a) == RETAIN
        meta_a = redis_client.hget(Keys(namespace + "a").window_meta("AAPL"), "max")  # type: ignore[attr-defined]
        meta_b = redis_client.hget(Keys(namespace + "b").window_meta("AAPL"), "max")  # type: ignore[attr-defined]
        assert meta_a == meta_b == str(bars[-1].minute).encode()
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
    assert 0 < redis_client.ttl(keys.window_meta("AAPL")) <= TTL  # type: ignore[attr-defined]


def test_conflicting_duplicate_keeps_the_first_and_is_reported(store: WindowStore, redis_client: object,
                                                                namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 70)
    store.apply(bars)
    changed = Bar(**{**_asdict(bars[65]), "close": bars[65].close * 1.01, "high": bars[65].high * 1.02})
    _, late, conflicts = store.apply([make_bars("AAPL", OPEN, 71)[70], changed])
    assert conflicts == [1] and late == []
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    assert next(r for r in rows if r.minute == changed.minute).close == bars[65].close


def _ready(store: WindowStore, bars: list[Bar]) -> tuple[int, np.ndarray, str, float | None] | None:
    results, _, _ = store.apply(bars)
    return results[bars[0].ticker].ready_window()


def test_gaps_short_ones_are_forward_filled_long_ones_are_not_ready(store: WindowStore) -> None:
    # 3 missing minutes (<= MAX_FILL) inside the window: ready, the gap filled with the last close
    bars = make_bars("AAPL", OPEN, 80, skip={40, 41, 42})
    rw = _ready(store, bars)
    assert rw is not None
    t, win, cs, pub = rw
    assert t == bars[-1].minute and win.shape == (WINDOW, 2) and pub == bars[-1].published_at
    gap_pos = WINDOW - (79 - 40) - 1  # index of minute 40 inside the window ending at minute 79
    assert win[gap_pos, 0] == win[gap_pos - 1, 0] and win[gap_pos, 1] == 0.0
    assert cs == checksum(win)
    # 10 missing minutes: not ready while the gap is inside the window...
    bars = make_bars("MSFT", OPEN, 80, skip=set(range(40, 50)))
    assert _ready(store, bars) is None
    # ...and ready again once the window has moved past it (minute 50 + 59 = 109)
    assert _ready(store, make_bars("MSFT", OPEN, 109)[80:]) is None
    assert _ready(store, make_bars("MSFT", OPEN, 110)[109:]) is not None
    # a window whose last minute is missing is not ready even though older minutes are complete
    results, _, _ = store.apply(make_bars("NVDA", OPEN, 70, skip={69}) + [make_bars("NVDA", OPEN, 75)[-1]])
    assert results["NVDA"].newest == OPEN + 60 * 74
    assert results["NVDA"].ready_window() is not None  # 69 is inside, filled; 74 real -> ready


def test_session_boundary_is_never_bridged(store: WindowStore) -> None:
    # 30 minutes before Tuesday's post-market close (20:00 NY = 00:00 UTC) and 40 after Wednesday 04:00 NY.
    day1_end = int(datetime(2025, 10, 1, 23, 30, tzinfo=UTC).timestamp())
    day2_start = int(datetime(2025, 10, 2, 8, 0, tzinfo=UTC).timestamp())
    bars = make_bars("AAPL", day1_end, 30) + make_bars("AAPL", day2_start, 40)
    assert _ready(store, bars) is None
    # 60 minutes into the new session the window is complete again
    rw = _ready(store, make_bars("AAPL", day2_start, 60)[40:])
    assert rw is not None and rw[0] == day2_start + 60 * 59


def test_readiness_announces_each_window_once(store: WindowStore) -> None:
    bars = make_bars("AAPL", OPEN, 61)
    results, _, _ = store.apply(bars)
    events, announced = readiness(results, ready_at=1.0)
    assert [(e.ticker, e.minute) for e in events] == [("AAPL", bars[-1].minute)]
    store.mark_announced(announced)
    results, _, _ = store.apply(bars[-5:])  # a replay: same window, same checksum
    assert readiness(results, ready_at=2.0)[0] == []


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
    assert rows[0] == WindowRow(good[0].minute, good[0].close, good[0].volume, good[0].published_at)
    stats = redis_client.hgetall(Keys(namespace).stats())  # type: ignore[attr-defined]
    assert int(stats[b"stream_messages"]) == len(msgs) + 1


def test_window_for_matches_the_policy_on_stored_rows(store: WindowStore, redis_client: object,
                                                      namespace: str) -> None:
    bars = make_bars("AAPL", OPEN, 100, skip={70})
    store.apply(bars)
    rows = read_window(redis_client, Keys(namespace), "AAPL")  # type: ignore[arg-type]
    win = window_for(rows, bars[-1].minute)
    assert win is not None
    expected_close = [b.close for b in bars if b.minute > bars[-1].minute - 60 * WINDOW]
    assert len(expected_close) == WINDOW - 1  # minute 70 missing, filled
    assert window_for(rows, OPEN + 60 * 70) is None  # that minute is not real
    assert window_for([], OPEN) is None
