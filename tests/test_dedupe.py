"""First value wins (:func:`minutecast.dedupe.first_wins`): its cases, a pure property against a
record-by-record reference, a property against the real Redis window store (the Lua script serving
runs) on the same shuffled, duplicated, conflicting input in random batches, and training's readers
(:func:`training.data.keep_first`, :func:`training.data.read_files`): a conflicting later duplicate never
reaches a window or a target."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minutecast.dedupe import first_wins
from minutecast.keys import Keys
from minutecast.schemas import Bar
from streams.window_store import WindowStore, read_window
from tests.support.bars import OPEN
from training import data as D

Record = tuple[str, int, float, float]  # ticker, minute offset, close, volume


def reference(records: Sequence[tuple[str, int, tuple[float, ...]]]) -> tuple[list[int], list[int], list[int]]:
    """The rule record by record, as the Lua script applies it: values compared as repr strings."""
    first: dict[tuple[str, int], str] = {}
    keep, dups, conflicts = [], [], []
    for i, (t, m, values) in enumerate(records):
        text = " ".join(repr(v) for v in values)
        if (t, m) not in first:
            first[t, m] = text
            keep.append(i)
        elif first[t, m] == text:
            dups.append(i)
        else:
            conflicts.append(i)
    return keep, dups, conflicts


def test_a_minute_keeps_its_first_value_and_later_ones_are_counted() -> None:
    minutes = np.array([120, 60, 120, 60, 180, 120])
    ohlcv = np.array([[1, 1, 1, 1, 5], [2, 2, 2, 2, 5], [1, 1, 1, 1, 5], [2, 2, 2, 3, 5], [4, 4, 4, 4, 0],
                      [1, 1, 1, 1, 6]], dtype=np.float64)
    fw = first_wins(minutes, ohlcv)
    assert fw.keep.tolist() == [0, 1, 4]  # arrival order, not minute order
    assert fw.duplicates.tolist() == [2] and fw.conflicts.tolist() == [3, 5]
    empty = first_wins(np.empty(0), np.empty((0, 5)))
    assert empty.keep.size == empty.duplicates.size == empty.conflicts.size == 0


def test_values_compare_as_the_store_compares_them_and_tickers_are_apart() -> None:
    nan = float("nan")
    fw = first_wins(np.array([60, 60, 120, 120]), np.array([[0.0], [-0.0], [nan], [nan]]))
    assert fw.conflicts.tolist() == [1] and fw.duplicates.tolist() == [3]  # repr: "0.0" != "-0.0", "nan" == "nan"
    fw = first_wins(np.array([60, 60, 60]), np.ones((3, 5)) * [[1], [2], [1]], tickers=np.array(["A", "B", "A"]))
    assert fw.keep.tolist() == [0, 1] and fw.duplicates.tolist() == [2] and fw.conflicts.size == 0


records_st = st.lists(st.tuples(st.sampled_from(["AAA", "BBB", "CCC"]), st.integers(0, 8),
                                st.sampled_from([100.0, 100.5, 100.00000000000001]),
                                st.sampled_from([0.0, -0.0, 10.0])), max_size=60)


@settings(max_examples=300, deadline=None, database=None)
@given(records=records_st)
def test_first_wins_is_the_record_by_record_rule(records: list[Record]) -> None:
    full = [(t, m, (c, c, c, c, v)) for t, m, c, v in records]
    fw = first_wins(np.array([m for _, m, _ in full], dtype=np.int64), np.array([x for *_, x in full]).reshape(-1, 5),
                    np.array([t for t, *_ in full]))
    assert (fw.keep.tolist(), fw.duplicates.tolist(), fw.conflicts.tolist()) == reference(full)


def _bar(rec: Record, published_at: float | None) -> Bar:
    t, k, c, v = rec
    return Bar(t, OPEN + 60 * k, c, c, c, c, v, "test", published_at)


@pytest.mark.integration
@settings(max_examples=100, deadline=None, database=None,  # no example files in the work tree
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # per-example uuid namespaces instead
@given(records=records_st, data=st.data())
def test_first_wins_agrees_with_the_redis_window_store(redis_client: Any, namespace: str, records: list[Record],
                                                       data: st.DataObject) -> None:
    pubs = data.draw(st.lists(st.sampled_from([None, 1.7e9, 1.7e9 + 1]), min_size=len(records),
                              max_size=len(records)), label="published_at")  # never part of the comparison
    bars = [_bar(r, p) for r, p in zip(records, pubs, strict=True)]
    sizes = data.draw(st.lists(st.integers(1, 7), min_size=len(bars) + 1, max_size=len(bars) + 1), label="batches")
    keys = Keys(f"{namespace}d{uuid.uuid4().hex[:8]}")
    try:
        store = WindowStore(redis_client, keys, 600)  # RETAIN bars > the 9 minutes drawn: nothing is late
        conflicts: list[int] = []
        i = 0
        for size in sizes:
            if i >= len(bars):
                break
            _, late, conf = store.apply(bars[i:i + size])
            assert late == []
            conflicts += [i + j for j in conf]
            i += size
        fw = first_wins(np.array([b.minute for b in bars], dtype=np.int64),
                        np.array([[b.open, b.high, b.low, b.close, b.volume] for b in bars]).reshape(-1, 5),
                        np.array([b.ticker for b in bars]))
        assert conflicts == fw.conflicts.tolist()
        dup = redis_client.hget(keys.stats(), "stream_dup")
        assert int(dup or 0) == fw.duplicates.size
        stored = {(t, r.minute): r for t in {b.ticker for b in bars} for r in read_window(redis_client, keys, t)}
        kept = {(bars[k].ticker, bars[k].minute): bars[k] for k in fw.keep}
        assert set(stored) == set(kept)
        newest = {t: max(m for tt, m in stored if tt == t) for t, _ in stored}
        for key, row in stored.items():
            b = kept[key]
            pub = b.published_at if key[1] == newest[key[0]] else None  # the layout keeps the newest row's only
            assert repr(row[1:]) == repr((b.open, b.high, b.low, b.close, b.volume, pub))
    finally:
        stale = list(redis_client.scan_iter(match=keys.namespace_pattern()))
        if stale:
            redis_client.delete(*stale)


def _series(n: int, close: float = 100.0) -> D.Series:
    minutes = OPEN + 60 * np.arange(n, dtype=np.int64)
    c = close + np.arange(n) / 100
    return D.Series(minutes, np.stack([c, c + 0.01, c - 0.01, c, np.full(n, 10.0)], axis=1))


def test_training_never_uses_a_conflicting_later_duplicate() -> None:
    clean = _series(80)
    late = D.Series(clean.minutes[[70]], clean.ohlcv[[70]] * [1, 1, 1, 2, 1])  # minute 70 again, close doubled
    same = D.Series(clean.minutes[[3]], clean.ohlcv[[3]])
    mixed = D.Series(np.r_[clean.minutes, late.minutes, same.minutes], np.r_[clean.ohlcv, late.ohlcv, same.ohlcv])
    kept, firsts = D.keep_first({"AAPL": mixed})
    assert (firsts.duplicates, firsts.conflicts) == (1, 1) and firsts.examples == [f"AAPL {OPEN + 60 * 70}"]
    np.testing.assert_array_equal(kept["AAPL"].ohlcv, clean.ohlcv)
    got, want = D.build_samples(kept, None), D.build_samples({"AAPL": clean}, None)
    np.testing.assert_array_equal(got.windows, want.windows)  # every window and target as without the repeat
    np.testing.assert_array_equal(got.targets, want.targets)


def test_recorded_files_keep_the_first_value_across_files(tmp_path: Path) -> None:
    clean = _series(80)

    def write(name: str, rows: D.Series) -> Path:
        lines = ["ticker,minute,open,high,low,close,volume"]
        lines += [f"AAPL,{m},{o!r},{h!r},{lo!r},{c!r},{v!r}" for m, (o, h, lo, c, v) in zip(rows.minutes, rows.ohlcv,
                                                                                            strict=True)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        return tmp_path / name

    a = write("a.csv", D.Series(clean.minutes[:75], clean.ohlcv[:75]))
    b = write("b.csv", D.Series(np.r_[clean.minutes[[10, 20]], clean.minutes[75:]],
                                np.r_[clean.ohlcv[[10]] * [1, 2, 0.5, 1, 1], clean.ohlcv[[20]], clean.ohlcv[75:]]))
    bars, firsts = D.read_files([a, b])
    assert (firsts.duplicates, firsts.conflicts) == (1, 1)
    np.testing.assert_array_equal(bars["AAPL"].minutes, clean.minutes)
    np.testing.assert_allclose(bars["AAPL"].ohlcv, clean.ohlcv, rtol=1e-15)  # CSV parsing: last-digit rounding
