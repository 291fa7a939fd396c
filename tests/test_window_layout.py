"""The binary window layout (v4) against the window policy, on the real Redis.

The store script keeps readiness and the window checksum up to date by itself (slot counters, one
substring hashed); :mod:`minutecast.window` is the policy written once. Property: after every call, for
every ticker, the script's scalars equal what the policy computes from scratch over the rows stored, and
the rows stored are the newest ``RETAIN`` minutes of everything delivered with each minute's first value,
for any gaps (filled, collapsed), order, duplication and batching. Also: the layout's bytes (header, row
count, length) are checked on read and an older layout is refused, never read wrongly; the migration
drops a v3 or v2 store and a rebuild writes v4.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.window import MAX_FILL, RETAIN, WINDOW, checksum, slots
from streams.window_store import (
    HEADER,
    LayoutError,
    WindowStore,
    decode_value,
    read_window,
)
from tests.support.bars import OPEN
from tests.support.windows import state

pytestmark = pytest.mark.integration

TTL = 3600


def _bar(ticker: str, minute: int, seed: int, pub: float | None) -> Bar:
    rng = random.Random(f"{ticker}{minute}{seed}")
    o = 100 + rng.random()
    c = o * (1 + (rng.random() - 0.5) / 100)
    return Bar(ticker, minute, o, max(o, c) + rng.random() / 10, min(o, c) - rng.random() / 10, c,
               float(rng.randrange(0, 10_000)), "test", pub)


def policy(delivered: list[Bar], retain: int) -> tuple[list[Bar], tuple[int, str] | None]:
    """The reference: (the bars a store must hold, (newest minute, checksum) of the window at the newest bar
    or None), computed from scratch with minutecast.window over the whole delivery."""
    kept: dict[int, Bar] = {}
    for b in delivered:
        if b.minute in kept:
            continue
        if len(kept) >= retain and b.minute < min(kept):
            continue  # late
        kept[b.minute] = b
        if len(kept) > retain:
            del kept[min(kept)]
    rows = [kept[m] for m in sorted(kept)]
    if not rows:
        return rows, None
    s = slots(np.array([b.minute for b in rows]), np.array([[b.open, b.high, b.low, b.close, b.volume] for b in rows]))
    last = len(rows) - 1
    if s.bar_slot[last] < WINDOW - 1:
        return rows, None
    return rows, (rows[-1].minute, checksum(s.windows(np.array([last]))[0]))


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[dict[str, list[Bar]], list[list[Bar]]]:
    """Two tickers' bars with steps of 1 minute (most), short gaps (filled) and long ones (collapsed), then
    delivered shuffled within a reach, duplicated, in batches of any size."""
    by: dict[str, list[Bar]] = {}
    for ticker, n in (("AAA", draw(st.integers(1, 160))), ("BBB", draw(st.integers(1, 80)))):
        steps = draw(st.lists(st.one_of(st.just(1), st.integers(2, MAX_FILL + 3), st.integers(60, 2000)),
                              min_size=n, max_size=n))
        minutes = OPEN + 60 * np.cumsum(steps)
        pub = draw(st.sampled_from([None, 1.75e9]))
        by[ticker] = [_bar(ticker, int(m), 0, pub) for m in minutes]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    stream = [b for bars in by.values() for b in bars]
    stream.sort(key=lambda b: (b.minute + 60 * rng.randrange(0, draw(st.sampled_from([1, 5, 40, 200])))))
    stream += rng.sample(stream, k=min(len(stream), rng.randrange(0, 30)))  # re-deliveries
    rng.shuffle(stream[-30:])
    cuts = sorted(rng.sample(range(1, len(stream)), k=min(len(stream) - 1, rng.randrange(0, 12))))
    batches = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return by, batches


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=deliveries(), retain=st.sampled_from([RETAIN, WINDOW + 5]))
def test_scalars_and_rows_equal_the_policy_after_every_call(redis_client: object, namespace: str,
                                                            case: tuple[dict[str, list[Bar]], list[list[Bar]]],
                                                            retain: int) -> None:
    by, batches = case
    keys = Keys(f"{namespace}{random.getrandbits(40):x}")
    store = WindowStore(redis_client, keys, TTL, retain=retain)  # type: ignore[arg-type]
    delivered: dict[str, list[Bar]] = {t: [] for t in by}
    for batch in batches:
        results, late, _ = store.apply(batch)
        for b in batch:
            delivered[b.ticker].append(b)
        for ticker, res in results.items():
            want_rows, want_ready = policy(delivered[ticker], retain)
            got = read_window(redis_client, keys, ticker)  # type: ignore[arg-type]
            assert [(r.minute, r.open, r.high, r.low, r.close, r.volume) for r in got] == \
                [(b.minute, b.open, b.high, b.low, b.close, b.volume) for b in want_rows]
            assert res.newest == want_rows[-1].minute
            assert (None if res.ready is None else (res.ready.minute, res.ready.checksum)) == want_ready
            if res.ready is not None:
                assert res.ready.published_at == want_rows[-1].published_at
    # the in-order delivery of the same bars ends in the same bytes
    again = WindowStore(redis_client, Keys(keys.namespace + "x"), TTL, retain=retain)  # type: ignore[arg-type]
    for bars in by.values():
        again.apply(bars)
    for ticker in by:
        assert state(redis_client.get(keys.window(ticker))) == \
            state(redis_client.get(again.keys.window(ticker)))  # type: ignore[attr-defined]
    for k in (keys, again.keys):
        found = list(redis_client.scan_iter(match=k.namespace_pattern()))  # type: ignore[attr-defined]
        if found:
            redis_client.delete(*found)  # type: ignore[attr-defined]


def test_the_checksum_moves_when_a_filled_minute_arrives_and_a_fill_opens_the_window(store_: WindowStore) -> None:
    # minute 10 missing (a fill) and 40 missing; 70 bars: the window at the newest starts at a fill only
    # for some ends; the checksum of each announced window equals the policy's, and filling a gap in later
    # changes it (the window's content changed)
    bars = [_bar("AAA", OPEN + 60 * i, 1, 1.75e9) for i in range(75) if i not in (10, 15, 40)]
    seen = []
    for b in bars:
        res, _, _ = store_.apply([b])
        seen.append(res["AAA"].ready)
    delivered = bars
    _, want = policy(delivered, RETAIN)
    assert want is not None and seen[-1] is not None and (seen[-1].minute, seen[-1].checksum) == want
    late_fill = _bar("AAA", OPEN + 60 * 40, 1, 1.75e9)
    res, _, _ = store_.apply([late_fill])
    _, want2 = policy([*delivered, late_fill], RETAIN)
    assert want2 is not None and res["AAA"].ready is not None and (res["AAA"].ready.minute,
                                                                   res["AAA"].ready.checksum) == want2
    assert want2[1] != want[1] and want2[0] == want[0]


@pytest.fixture
def store_(redis_client: object, namespace: str) -> WindowStore:
    return WindowStore(redis_client, Keys(namespace), TTL)  # type: ignore[arg-type]


def test_layout_bytes_are_checked_and_an_older_layout_is_refused(store_: WindowStore, redis_client: object) -> None:
    bars = [_bar("AAA", OPEN + 60 * i, 2, None if i % 2 else 1.7e9) for i in range(RETAIN + 7)]
    store_.apply(bars)
    value = redis_client.get(store_.keys.window("AAA"))  # type: ignore[attr-defined]
    magic, n, ann, _, pub = HEADER.unpack_from(value)
    assert (magic, n, ann, pub) == (b"MCW4", RETAIN, -1.0, bars[-1].published_at)
    assert len(value) == HEADER.size + 56 * RETAIN == 5_080
    rows = decode_value(value)
    assert rows[:, 0].tolist() == [b.minute for b in bars[-RETAIN:]]
    # only the newest row's published_at is kept (the one the script reports with a ready window)
    assert [None if math.isnan(p) else p for p in rows[:, 6]] == [None] * (RETAIN - 1) + [bars[-1].published_at]
    store_.apply([_bar("AAA", bars[-1].minute + 60, 2, None), _bar("AAA", bars[-1].minute - 60, 2, 1.9e9)])
    assert HEADER.unpack_from(redis_client.get(store_.keys.window("AAA")))[4] != 1.9e9  # type: ignore[attr-defined]
    assert math.isnan(decode_value(redis_client.get(store_.keys.window("AAA")))[-1, 6])  # type: ignore[attr-defined]
    with pytest.raises(LayoutError, match="layout"):
        decode_value(b"0.1 0.2 0.3 0.4 5 None")  # a v2 hash value
    with pytest.raises(LayoutError, match="bytes"):
        decode_value(value[:-8])
    # the script refuses to write over a value of another layout rather than guess
    redis_client.set(store_.keys.window("BBB"), b"v2 text")  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="not MCW4"):
        store_.apply([_bar("BBB", OPEN, 0, None)])


def test_announced_window_is_kept_in_the_header(store_: WindowStore) -> None:
    bars = [_bar("AAA", OPEN + 60 * i, 3, 1.7e9) for i in range(WINDOW)]
    res, _, _ = store_.apply(bars)
    ready = res["AAA"].ready
    assert ready is not None and res["AAA"].announced is None
    store_.mark_announced({"AAA": (ready.minute, ready.checksum)})
    res, _, _ = store_.apply(bars[-1:])  # a duplicate: nothing changes, the announcement is reported
    assert (res["AAA"].announced, res["AAA"].announced_sum) == (ready.minute, ready.checksum)
    res, _, _ = store_.apply([_bar("AAA", OPEN + 60 * WINDOW, 3, 1.7e9)])  # a new bar keeps it too
    assert (res["AAA"].announced, res["AAA"].announced_sum) == (ready.minute, ready.checksum)
    store_.mark_announced({"GONE": (1, "0" * 16)})  # an expired ticker is not recreated
    assert not store_.client.exists(store_.keys.window("GONE"))


def test_upgrade_drops_a_v3_or_v2_store_and_its_applied_record(store_: WindowStore, redis_client: object) -> None:
    keys = store_.keys
    redis_client.set(f"{keys.namespace}:w3:BBB", b"MCW3" + bytes(28))  # type: ignore[attr-defined]
    redis_client.hset(f"{keys.namespace}:win:AAA", mapping={str(OPEN): "1.0 1.0 1.0 1.0 1.0 None"})  # type: ignore
    redis_client.hset(f"{keys.namespace}:winmeta:AAA", mapping={"max": OPEN})  # type: ignore[attr-defined]
    redis_client.hset(keys.stream_applied(), mapping={"0": 41})  # type: ignore[attr-defined]
    assert sorted(store_.legacy_keys()) == [f"{keys.namespace}:w3:BBB", f"{keys.namespace}:win:AAA",
                                            f"{keys.namespace}:winmeta:AAA"]
    assert not store_.has_windows()  # the old layouts are not a store of this version
    assert store_.drop_legacy() == 2
    assert store_.legacy_keys() == [] and store_.applied() == {}
