"""Corrections (a late bar changes an announced window; Faust re-announces it with a new checksum): the
Spark job's partition function against the real Redis serves a corrected forecast (latest hash, history,
the published row) and counts it; replays stay byte-identical and count no correction; an older event
never undoes a correction; a correction applies no calibration outcome twice. Also the forecast store's
write contract (a forecast without a checksum is write-once) and the Forecast's optional ``window_checksum``
field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from minutecast.errors import Rejected
from minutecast.forecast_store import ForecastStore
from minutecast.intervals import OnlineScale, baseline_log_quantiles, to_prices
from minutecast.keys import Keys
from minutecast.schemas import REASONS, Bar, Forecast, WindowReady
from minutecast.settings import RedisSettings
from minutecast.topics import Topics
from minutecast.window import HORIZON, C, checksum
from streams.partition import COUNTS
from streams.serving import catch_up, closes_by_minute
from streams.window_store import read_windows
from streams.windows import window_for
from tests.support.inference import T0, bars_for, ready_event, store_bars
from tests.support.partition import forecast_rows, job_conf, run_partition

integration = pytest.mark.integration


def minute(i: int) -> int:
    return T0 + 60 * i


def without(bars: list[Bar], *late: int) -> list[Bar]:
    """``bars`` before the late ones (minutes T0 + 60*i for i in ``late``) have arrived."""
    return [b for b in bars if b.minute not in {minute(i) for i in late}]


def reannounced(bars: list[Bar], ticker: str, i: int, before: WindowReady) -> WindowReady:
    """Faust's re-announcement of ``before``'s minute once the late bars are in: the new checksum, later."""
    return dataclasses.replace(ready_event(bars, ticker, i), ready_at=before.ready_at + 1.0)


def calibration(client: Any, keys: Keys, ticker: str) -> dict[str, object]:
    return dict(ForecastStore(keys).calibration_now(client, ticker))


@integration
@pytest.mark.faults
def test_reannounced_window_is_corrected_served_counted_and_never_undone(
        redis_client: Any, redis_settings: RedisSettings, namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(75))
    early = without(bars, 70)  # bar 70 arrives late: the window at 74 forward-fills it until then
    store_bars(redis_client, namespace, early)
    conf = job_conf(namespace, redis_settings, tmp_path / "models")  # persistence + baseline interval
    t = minute(74)

    first = ready_event(early, "AAA", 74)
    rows1, stats1 = run_partition(conf, [first])
    (row1,) = forecast_rows(rows1, topics)
    f1 = Forecast.from_json(row1[2])
    assert stats1["forecasts"] == 1 and stats1.get("corrections", 0) == 0
    assert f1.window_checksum == first.checksum and f1.window_ready_at == first.ready_at

    # The late bar lands; the first event's batch replayed now (before Faust's re-announcement) reads the
    # changed window, yet republishes what it stored: a replay never corrects.
    store_bars(redis_client, namespace, [b for b in bars if b.minute == minute(70)])
    rows, stats = run_partition(conf, [first])
    assert forecast_rows(rows, topics) == [row1] and stats["checksum_mismatch"] == 1 and stats["replayed"] == 1
    # Faust re-announces minute 74 with the new checksum.
    second = reannounced(bars, "AAA", 74, first)
    assert second.checksum != first.checksum
    rows2, stats2 = run_partition(conf, [second])
    (row2,) = forecast_rows(rows2, topics)
    f2 = Forecast.from_json(row2[2])
    assert stats2["corrections"] == 1 and stats2.get("forecasts", 0) == 0 and stats2.get("replayed", 0) == 0
    assert (f2.as_of, f2.window_checksum, f2.window_ready_at) == (t, second.checksum, second.ready_at)
    # Made from the corrected window: the baseline interval of the window that has the real bar 70.
    w2 = window_for(read_windows(redis_client, keys, ["AAA"])["AAA"], t)
    assert w2 is not None and checksum(w2) == second.checksum
    served = OnlineScale().apply(baseline_log_quantiles(w2[None], (1.0, 1.0))[0])  # fresh state: scale 1
    want = to_prices(served[None], np.array([w2[-1, C]]))[0]
    np.testing.assert_allclose(f2.quantiles or (), want, rtol=1e-12)
    assert f2.quantiles != f1.quantiles
    # Served: the latest (same as_of: a correction may replace it), the history and the published row.
    store = ForecastStore(keys)
    latest = store.latest_now(redis_client, "AAA")
    assert latest is not None and latest.decode() == row2[2] == store.history_now(redis_client, "AAA")[t].decode()

    # A replay of the correction's batch (and of both events together): the same bytes, no new correction.
    for items in ([second], [first, second]):
        rows, stats = run_partition(conf, items)
        assert forecast_rows(rows, topics) == [row2]
        assert stats.get("corrections", 0) == 0 and stats["replayed"] == 1
    # The first event again (Faust re-sent it): the window it reads is the corrected one; nothing changes.
    rows, stats = run_partition(conf, [first])
    assert forecast_rows(rows, topics) == [row2] and stats.get("corrections", 0) == 0
    # Even an older event whose window really differs (bar 70 gone again) cannot undo the correction:
    # its window_ready_at is older than the stored forecast's.
    redis_client.delete(keys.window("AAA"))
    store_bars(redis_client, namespace, early)
    rows, stats = run_partition(conf, [first])
    assert forecast_rows(rows, topics) == [row2] and stats.get("corrections", 0) == 0
    assert stats["replayed"] == 1 and stats.get("checksum_mismatch", 0) == 0
    assert store.latest_now(redis_client, "AAA") == latest
    assert store.history_now(redis_client, "AAA")[t].decode() == row2[2]


@integration
def test_correction_of_an_older_as_of_keeps_the_latest_and_a_known_window_is_no_correction(
        redis_client: Any, redis_settings: RedisSettings, namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(76))
    early = without(bars, 70)
    store_bars(redis_client, namespace, early)
    conf = job_conf(namespace, redis_settings, tmp_path / "models")

    first = ready_event(early, "AAA", 74)
    run_partition(conf, [first])
    run_partition(conf, [ready_event(early, "AAA", 75)])  # the latest is at 75 now
    store = ForecastStore(keys)
    latest = store.latest_now(redis_client, "AAA")
    store_bars(redis_client, namespace, [b for b in bars if b.minute == minute(70)])
    rows, stats = run_partition(conf, [reannounced(bars, "AAA", 74, first)])
    (row,) = forecast_rows(rows, topics)
    assert stats["corrections"] == 1
    assert store.history_now(redis_client, "AAA")[minute(74)].decode() == row[2]
    assert store.latest_now(redis_client, "AAA") == latest  # the latest never moves back in as_of

    # A re-announcement whose window the stored forecast was already made from is no correction: the first
    # event of 75 was served after the late bar had landed (a checksum mismatch), its re-announcement
    # republishes what is stored.
    stale = ready_event(early, "AAA", 75)
    redis_client.delete(keys.forecast("AAA"))  # history and latest (the calibration stays, as it did in v1)
    rows1, stats1 = run_partition(conf, [stale])
    assert stats1["checksum_mismatch"] == 1 and stats1["forecasts"] == 1
    rows2, stats2 = run_partition(conf, [reannounced(bars, "AAA", 75, stale)])
    assert forecast_rows(rows2, topics) == forecast_rows(rows1, topics)
    assert stats2.get("corrections", 0) == 0 and stats2["replayed"] == 1


@integration
def test_correction_applies_no_outcome_twice_and_later_outcomes_use_it(
        redis_client: Any, redis_settings: RedisSettings, namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(94))
    early = without([b for b in bars if b.minute <= minute(88)], 85)
    store_bars(redis_client, namespace, early)
    conf = job_conf(namespace, redis_settings, tmp_path / "models")
    for i in range(76, 85):
        run_partition(conf, [ready_event(early, "AAA", i)])
    first = ready_event(early, "AAA", 88)
    _, stats = run_partition(conf, [first])
    assert stats["outcomes"] == 3  # targets 86, 87, 88 (as-of 81..83); 85's bar is not there yet
    calib = calibration(redis_client, keys, "AAA")

    store_bars(redis_client, namespace, [b for b in bars if b.minute == minute(85)])
    second = reannounced([b for b in bars if b.minute <= minute(88)], "AAA", 88, first)
    rows, stats = run_partition(conf, [second])
    (row,) = forecast_rows(rows, topics)
    assert stats["corrections"] == 1 and stats.get("outcomes", 0) == 0
    assert calibration(redis_client, keys, "AAA") == calib  # nothing applied again, nothing moved back
    f = Forecast.from_json(row[2])
    state = OnlineScale.from_dict(calib)
    assert (f.log_s80, f.log_s90) == (state.log_s80, state.log_s90)
    rows, stats = run_partition(conf, [second])  # replayed: same bytes, still nothing applied
    assert forecast_rows(rows, topics) == [row] and stats.get("outcomes", 0) == 0

    # The outcome of as-of 88 (target 93) is scored on the interval that was served last: the correction.
    history = ForecastStore(keys).history_now(redis_client, "AAA")
    assert history[minute(88)].decode() == row[2]
    store_bars(redis_client, namespace, [b for b in bars if b.minute > minute(88)])
    want = OnlineScale.from_dict(calib)
    closes = closes_by_minute(read_windows(redis_client, keys, ["AAA"])["AAA"])
    assert catch_up(want, history, closes, minute(93)) == 2  # as-of 84 and 88
    _, stats = run_partition(conf, [ready_event(bars, "AAA", 93)])
    assert stats["outcomes"] == 2
    assert OnlineScale.from_dict(calibration(redis_client, keys, "AAA")) == want
    assert want.through == minute(88) + 60 * HORIZON


# -- the write script's contract (hand-made forecasts) ------------------------------------------------


def doc(asof: int, ready: float, sum_: str | None, close: float = 101.5) -> Forecast:
    return Forecast("AAA", asof, 5, close, 101.0, "persistence", "persistence", None, ready, ready + 1,
                    q05=99.0, q10=100.0, q50=close, q90=103.0, q95=104.0, sigma=0.001, interval_kind="baseline",
                    log_s80=0.0, log_s90=0.0, window_checksum=sum_)


@integration
def test_write_script_replaces_only_for_a_newer_window_with_another_checksum(redis_client: Any,
                                                                              namespace: str) -> None:
    store = ForecastStore(Keys(namespace), history_len=120, ttl_s=600)
    t = 1_800_000_000

    def write(d: Forecast) -> tuple[int, Forecast]:
        status, stored = store.write_now(redis_client, [(d, None)])[0]
        return status, Forecast.from_json(stored)

    aa, bb, cc, dd, ee, ff = (c * 16 for c in "abcdef")
    a = doc(t, 1.8e9 + 10.0, aa)
    assert write(a) == (1, a)
    b = doc(t, 1.8e9 + 11.0, bb, close=102.0)
    assert write(dataclasses.replace(b, window_checksum=None)) == (0, a)  # no checksum: write-once as before
    assert write(doc(t, 1.8e9 + 10.0, cc)) == (0, a)  # a replay: same window_ready_at
    assert write(doc(t, 1.8e9 + 11.0, aa)) == (0, a)  # a newer announcement of the same window
    assert write(b) == (2, b)  # newer and another window: corrected
    assert store.latest_now(redis_client, "AAA") == b.to_json()
    assert write(doc(t, 1.8e9 + 10.5, dd)) == (0, b)  # older than the correction: kept
    assert write(b) == (0, b)  # the correction replayed
    # An entry written before forecasts carried a checksum is corrected by any newer announcement.
    old = doc(t + 60, 1.8e9 + 20.0, None)
    assert write(old) == (1, old)
    new = doc(t + 60, 1.8e9 + 21.0, ee)
    assert write(new) == (2, new)
    # A correction of an older as-of goes to history only: the latest stays at t + 60.
    c = doc(t, 1.8e9 + 12.0, "f1")  # a checksum of another spelling (stored raw) corrects just the same
    assert write(c) == (2, c)
    assert write(dataclasses.replace(c, window_ready_at=1.8e9 + 13.0)) == (0, c)  # same window, later
    assert write(doc(t, 1.8e9 + 14.0, ff)) == (2, doc(t, 1.8e9 + 14.0, ff))
    assert store.latest_now(redis_client, "AAA") == new.to_json()
    assert store.history_now(redis_client, "AAA")[t] == doc(t, 1.8e9 + 14.0, ff).to_json()


# -- pure: the schema field and the counter ---------------------------------------------------------


BASE = Forecast("AAPL", 1_759_325_400, 5, 252.6, 252.52, "persistence", "persistence", None, 2.0, 3.0,
                q05=251.9, q10=252.1, q50=252.6, q90=253.05, q95=253.2, sigma=0.0013, interval_kind="baseline",
                log_s80=0.0, log_s90=0.0)


def test_window_checksum_is_optional_additive_and_strict_when_present() -> None:
    assert "window_checksum" not in json.loads(BASE.to_json())  # old forecasts keep their exact bytes
    assert Forecast.from_json(BASE.to_json()) == BASE and BASE.window_checksum is None
    with_sum = dataclasses.replace(BASE, window_checksum="0123456789abcdef")
    assert json.loads(with_sum.to_json())["window_checksum"] == "0123456789abcdef"
    assert Forecast.from_json(with_sum.to_json()) == with_sum
    v1 = Forecast("AAPL", 1_759_325_400, 5, 253.0, 252.52, "persistence", "persistence", 1.0, 2.0, 3.0,
                  window_checksum="ab")
    assert "window_checksum" not in json.loads(v1.to_json())  # v1 has no such field
    for bad, reason in ((None, "wrong_type"), (12, "wrong_type"), ("", "bad_text"), ("ABCDEF", "bad_text"),
                        ('ab"cd', "bad_text"), ("a" * 65, "bad_text"), ("ab\n", "bad_text")):
        d = json.loads(with_sum.to_json()) | {"window_checksum": bad}
        with pytest.raises(Rejected) as info:
            Forecast.from_json(json.dumps(d))
        assert info.value.reason == reason and reason in REASONS


def test_corrections_are_a_counter_of_the_job() -> None:
    assert "corrections" in COUNTS and len(set(COUNTS)) == len(COUNTS)
