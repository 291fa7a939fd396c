"""The inference job's per-partition function against the real Redis, without Spark (fast):
newest-event selection, supersession and dead-letter accounting, idempotent writes, bounded history,
the calibrated baseline before any model, market context read in the same round trip, the per-ticker
online calibration applied once per outcome (exactly as the evaluation replays it), byte-identical
replays, the baseline fallback for a broken model output, hot reload of a promoted model and keeping
the old one when a new one fails. Pure pieces (output checks, the catch-up's skipping rules) are unit
tests without services.

The helpers shared with ``test_infer_spark.py`` and ``test_bad_input.py`` (window data in the Faust app's
storage format, window-ready events, tiny models) live in ``tests/support/inference.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.connection

from minutecast.features import N_FEATURES
from minutecast.forecast_store import ForecastStore
from minutecast.intervals import OnlineScale, baseline_log_quantiles, calibrate_in_time_order
from minutecast.keys import Keys
from minutecast.registry import Registry
from minutecast.schemas import Bar, Forecast, WindowReady
from minutecast.settings import RedisSettings
from minutecast.topics import Topics
from minutecast.window import HORIZON, WINDOW
from streams.serving import catch_up, check_outputs
from streams.window_store import WindowRow, read_windows
from streams.windows import window_for, windows_for
from tests.support.inference import MARKET, SCALER, T0, bars_for, ready_event, store_bars, tiny_model_version
from tests.support.partition import forecasts_of, job_conf, run_partition

integration = pytest.mark.integration
tensorflow = pytest.mark.tensorflow  # builds or loads a Keras model


def constant_model_version(models_dir: Path, outputs: list[float]) -> str:
    """Save a network whose output is always ``outputs`` (target units): zero kernel, that bias."""
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((WINDOW, N_FEATURES)), tf.keras.layers.GlobalAveragePooling1D(),
                                 tf.keras.layers.Dense(len(outputs), kernel_initializer="zeros",
                                                       bias_initializer=tf.keras.initializers.Constant(outputs))])
    return Registry(models_dir).save(model, SCALER, {"test": True, "constant": outputs})


def prices(f: Forecast) -> np.ndarray:
    q = f.quantiles
    assert q is not None, "a v1 forecast"
    return np.array(q)


@integration
def test_partition_accounting_idempotence_history(redis_client: Any, redis_settings: RedisSettings,
                                                  namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(75)) + bars_for("BBB", range(75)) + bars_for("CCC", range(75))
    store_bars(redis_client, namespace, bars)
    conf = job_conf(namespace, redis_settings, tmp_path / "models", history_len=3)  # no model: persistence

    items: list[WindowReady | bytes] = [
        ready_event(bars, "AAA", 65), ready_event(bars, "AAA", 64),  # 64 is superseded in the batch
        ready_event(bars, "BBB", 65),
        WindowReady("CCC", T0 + 60 * 30, "x", None, time.time()),  # fewer than 60 slots yet: state moved on
        WindowReady("DDD", T0 + 60 * 65, "x", None, time.time()),  # no window stored at all
        b'{"not json',
    ]
    rows, stats = run_partition(conf, items)
    fc = forecasts_of(rows, topics)
    dead = [json.loads(r[2]) for r in rows if r[0] == topics.deadletter]
    assert set(fc) == {"AAA", "BBB"}
    for f in fc.values():
        assert (f.as_of, f.model_version, f.model_kind) == (T0 + 60 * 65, "persistence", "persistence")
        assert f.predicted_close == f.last_close == f.q50 and f.published_at is not None
        assert f.interval_kind == "baseline" and f.version == 2 and f.log_s80 == f.log_s90 == 0.0
        q = prices(f)
        assert q[0] < q[1] < q[2] < q[3] < q[4] and f.sigma is not None and f.sigma > 0
        assert f.window_ready_at <= f.forecast_at
    assert sorted(d["reason"] for d in dead) == ["not_json", "window_missing"]
    assert all(d["stage"] == "infer" and d["source_topic"] == topics.ready for d in dead)
    assert stats["events"] == 6 and stats["forecasts"] == 2 and stats["superseded_batch"] == 1
    assert stats["superseded_state"] == 1 and stats["dead_letter"] == 2 and stats["model:persistence"] == 2
    assert stats["redis_roundtrips"] == 2  # one read, one write for the whole partition
    store = ForecastStore(keys)
    latest = store.latest_now(redis_client, "AAA")
    assert latest is not None and Forecast.from_json(latest) == fc["AAA"]
    # The store gives back the very bytes that were published (one encoder, whatever the stored layout).
    assert [latest.decode()] == [r[2] for r in rows if r[0] == topics.forecasts and r[1] == "AAA"]

    # A replayed batch (restart from the checkpoint) emits exactly what Redis kept the first time.
    rows2, stats2 = run_partition(conf, items)
    assert sorted(r for r in rows2 if r[0] == topics.forecasts) == sorted(r for r in rows if r[0] == topics.forecasts)
    assert stats2.get("forecasts", 0) == 0 and stats2["replayed"] == 2
    # The latest is the newest history entry itself (layout v2 keeps no separate copy that could be lost
    # alone, which the v1 test here restored from history by a replay).
    hist = store.history_now(redis_client, "AAA")
    assert hist[max(hist)] == latest

    # An older as-of goes to history but never moves the latest forecast back.
    run_partition(conf, [ready_event(bars, "AAA", 62)])
    assert Forecast.from_json(store.latest_now(redis_client, "AAA")).as_of == T0 + 60 * 65
    # History is bounded to the newest history_len as-of minutes.
    for i in (70, 71, 72, 73):
        run_partition(conf, [ready_event(bars, "AAA", i)])
    hist = store.history_now(redis_client, "AAA")
    assert sorted(hist) == [T0 + 60 * i for i in (71, 72, 73)]
    assert Forecast.from_json(store.latest_now(redis_client, "AAA")).as_of == T0 + 60 * 73


@integration
def test_calibration_applied_once_per_outcome_as_evaluation_replays_it(
        redis_client: Any, redis_settings: RedisSettings, namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(90)) + bars_for(MARKET, range(90), seed=5)
    store_bars(redis_client, namespace, bars)
    models = tmp_path / "models"
    scale = (0.5, 0.6)  # a narrow calibrated baseline: misses happen, so the online scales move
    Registry(models).save_baseline_scale(scale, {"test": True})
    conf = job_conf(namespace, redis_settings, models)

    served_minutes = [*range(60, 70), *range(71, 84, 2)]  # a gap in what was served, as supersession makes
    first: dict[int, tuple[str, str, str]] = {}
    applied = 0
    for i in served_minutes:
        rows, stats = run_partition(conf, [ready_event(bars, "AAA", i)])
        (row,) = [r for r in rows if r[0] == topics.forecasts]
        first[i] = row
        applied += stats.get("outcomes", 0)

    # What the evaluation computes for the same forecasts, in time order, from the same raw intervals.
    stored = read_windows(redis_client, keys, ["AAA", MARKET])
    windows = np.stack([window_for(stored["AAA"], T0 + 60 * i, stored[MARKET]) for i in served_minutes])
    close = {r.minute: r.close for r in stored["AAA"]}
    ends = np.array([T0 + 60 * i for i in served_minutes])
    realised = np.array([np.log(close[e + 60 * HORIZON] / close[e]) if e + 60 * HORIZON in close else np.nan
                         for e in ends])
    served, states = calibrate_in_time_order(np.array(["AAA"] * len(ends)), ends,
                                             baseline_log_quantiles(windows, scale), realised)
    got = np.stack([prices(Forecast.from_json(first[i][2])) for i in served_minutes])
    np.testing.assert_allclose(got, windows[:, -1, 3, None] * np.exp(served), rtol=1e-12)
    final = states["AAA"]
    calib = ForecastStore(keys).calibration_now(redis_client, "AAA")
    assert OnlineScale.from_dict(calib) == final and final.log_s80 != 0.0
    # Every forecast whose target minute was not after the last as-of was applied exactly once.
    assert applied == sum(1 for e in ends if e + 60 * HORIZON <= ends[-1]) and final.through <= ends[-1]

    # Replays (the last batch, and an older one) give byte-identical forecasts and apply nothing again.
    for i in (served_minutes[-1], 65):
        rows, stats = run_partition(conf, [ready_event(bars, "AAA", i)])
        assert [r for r in rows if r[0] == topics.forecasts] == [first[i]]
        assert stats.get("outcomes", 0) == 0 and stats["replayed"] == 1
    calib2 = ForecastStore(keys).calibration_now(redis_client, "AAA")
    assert calib2 == calib


@integration
@tensorflow
def test_model_with_market_context_in_one_round_trip(redis_client: Any, redis_settings: RedisSettings,
                                                     namespace: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    models = tmp_path / "models"
    bars = bars_for("AAA", range(75)) + bars_for("BBB", range(75)) + bars_for(MARKET, range(75), seed=9)
    store_bars(redis_client, namespace, bars)
    registry = Registry(models)
    version = tiny_model_version(models, seed=4)
    registry.promote(version)
    conf = job_conf(namespace, redis_settings, models)
    run_partition(conf, [ready_event(bars, "AAA", 70)])  # the worker connects and loads the model

    sent: list[int] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def counting_send(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        real_send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
    rows, stats = run_partition(conf, [ready_event(bars, "AAA", 72), ready_event(bars, "BBB", 72)])
    monkeypatch.undo()
    assert len(sent) == 2 and stats["redis_roundtrips"] == 2  # windows + market + calibration; then writes
    fc = forecasts_of(rows, topics)
    assert {(f.model_version, f.model_kind, f.interval_kind) for f in fc.values()} == {(version, "lstm", "lstm")}

    # The served intervals are the model's on windows *with* the market's context (fresh calibration
    # state on BBB: scale 1), and differ from what the same model gives without it.
    model = registry.load(version)
    stored = read_windows(redis_client, keys, ["BBB", MARKET])
    t = T0 + 60 * 72
    with_mkt = model.predict_log_quantiles(window_for(stored["BBB"], t, stored[MARKET])[None])[0]
    without = model.predict_log_quantiles(window_for(stored["BBB"], t)[None])[0]
    got = np.log(prices(fc["BBB"]) / fc["BBB"].last_close)
    np.testing.assert_allclose(got, OnlineScale().apply(with_mkt), atol=1e-9)
    assert np.abs(got - OnlineScale().apply(without)).max() > 1e-7
    assert fc["BBB"].predicted_close == fc["BBB"].q50


@integration
@tensorflow
def test_broken_model_output_falls_back_to_baseline(redis_client: Any, redis_settings: RedisSettings,
                                                    namespace: str, tmp_path: Path) -> None:
    topics = Topics(namespace)
    models = tmp_path / "models"
    bars = bars_for("AAA", range(70))
    store_bars(redis_client, namespace, bars)
    # Finite on the registry's probe (so it loads), but a 5-minute move of e^2: never published.
    version = constant_model_version(models, [990.0, 995.0, 1000.0, 1005.0, 1010.0])
    Registry(models).promote(version)
    rows, stats = run_partition(job_conf(namespace, redis_settings, models), [ready_event(bars, "AAA", 65)])
    f = forecasts_of(rows, topics)["AAA"]
    assert stats["out_of_range"] == 1 and stats["model:persistence"] == 1
    assert (f.model_kind, f.interval_kind, f.predicted_close) == ("persistence", "baseline", f.last_close)


@integration
@tensorflow
def test_partition_hot_reload_and_failed_load(redis_client: Any, redis_settings: RedisSettings, namespace: str,
                                              tmp_path: Path) -> None:
    models = tmp_path / "models"
    bars = bars_for("AAA", range(75)) + bars_for("BBB", range(75))
    store_bars(redis_client, namespace, bars)
    conf = job_conf(namespace, redis_settings, models)
    registry = Registry(models)

    def served(i: int) -> set[tuple[str, str, str | None]]:
        rows, _ = run_partition(conf, [ready_event(bars, "AAA", i), ready_event(bars, "BBB", i)])
        fs = [Forecast.from_json(r[2]) for r in rows]
        return {(f.model_version, f.model_kind, f.interval_kind) for f in fs}

    assert served(60) == {("persistence", "persistence", "baseline")}
    v1 = tiny_model_version(models, seed=1)
    registry.promote(v1)
    assert served(61) == {(v1, "lstm", "lstm")}
    v2 = tiny_model_version(models, seed=2)
    registry.promote(v2)
    assert served(62) == {(v2, "lstm", "lstm")}
    # CURRENT pointing at a version that cannot load: the old model keeps serving.
    broken = tiny_model_version(models, seed=3)
    (models / broken / "model.keras").write_bytes(b"garbage")
    (models / "CURRENT").write_text(broken + "\n")
    assert served(63) == {(v2, "lstm", "lstm")}


# -- pure logic ----------------------------------------------------------------------------------------


def test_batched_windows_equal_window_for() -> None:
    def rows(b: list[Bar]) -> list[WindowRow]:
        return [WindowRow(x.minute, x.open, x.high, x.low, x.close, x.volume, x.published_at) for x in b]

    market = rows(bars_for(MARKET, range(0, 80, 2)))  # a sparse market: filled and missing minutes
    series = [rows(bars_for("AAA", range(75))), rows(bars_for("BB", range(10, 80))), [], rows(bars_for("C", range(30)))]
    minutes = [T0 + 60 * 74, T0 + 60 * 79, T0 + 60 * 70, T0 + 60 * 29]
    for mk in (market, None):
        got = windows_for(series, minutes, mk)
        want = [window_for(r, t, mk) for r, t in zip(series, minutes, strict=True)]
        assert [g is None for g in got] == [w is None for w in want] == [False, False, True, True]
        for g, w in zip(got, want, strict=True):
            if w is not None:
                assert g is not None and g.tobytes() == w.tobytes()  # bit for bit


def test_check_outputs_flags_each_kind_once() -> None:
    raw = np.array([[-0.02, -0.01, 0.0, 0.01, 0.02],  # fine
                    [-0.02, np.nan, 0.0, 0.01, 0.02],  # non-finite
                    [-0.01, -0.02, 0.0, 0.01, 0.02],  # crossing
                    [-0.02, -0.01, 0.0, 0.01, 2.5],  # a 5-minute move of e^2.5: out of range
                    [np.inf, -0.02, 0.0, 0.01, 0.02]])  # non-finite (counted once, though it also "crosses")
    bad = check_outputs(raw)
    assert bad["non_finite"].tolist() == [False, True, False, False, True]
    assert bad["crossing"].tolist() == [False, False, True, False, False]
    assert bad["out_of_range"].tolist() == [False, False, False, True, False]


def test_catch_up_skips_missing_bars_v1_entries_and_applied_targets() -> None:
    def fc(i: int, v2: bool = True) -> bytes:
        q = {"q05": 99.0, "q10": 99.5, "q50": 100.0, "q90": 100.5, "q95": 101.0, "sigma": 0.003,
             "interval_kind": "baseline", "log_s80": 0.0, "log_s90": 0.0} if v2 else {}
        return Forecast("AAA", T0 + 60 * i, HORIZON, 100.0, 100.0, "persistence", "persistence", None, 1.0, 2.0,
                        **q).to_json()  # type: ignore[arg-type]

    history = {T0 + 60 * i: fc(i) for i in range(9)} | {T0 + 60 * 9: fc(9, v2=False)}
    # Realised closes at each target: inside both intervals for even as-of minutes, outside for odd ones;
    # the target bar of as-of 3 is missing.
    closes = {T0 + 60 * (i + HORIZON): 102.0 if i % 2 else 100.0 for i in range(10) if i != 3}
    state = OnlineScale(through=T0 + 60 * (1 + HORIZON))  # outcomes of as-of 0 and 1 already applied
    n = catch_up(state, history, closes, T0 + 60 * 14)
    # Due: targets in (through, t] = as-of 2..9; 3 has no bar, 9 is v1 (no served interval): 2,4,5,6,7,8.
    assert n == 6 and state.through == T0 + 60 * (8 + HORIZON)
    hits, misses = 4, 2  # 2, 4, 6, 8 inside; 5, 7 outside
    assert state.log_s80 == pytest.approx(0.01 * (misses * 0.8 - hits * 0.2), abs=1e-6)  # float32 steps
    assert state.log_s90 == pytest.approx(0.01 * (misses * 0.9 - hits * 0.1), abs=1e-6)
    again = OnlineScale(**vars(state))
    assert catch_up(again, history, closes, T0 + 60 * 14) == 0 and again == state  # nothing applied twice
