"""The inference job's per-partition function against the real Redis, without Spark (fast):
newest-event selection, supersession and dead-letter accounting, idempotent writes, bounded history,
persistence before any model, hot reload of a promoted model and keeping the old one when a new one fails.

The helpers here (window data in the Faust app's storage format, window-ready events, a tiny model) are
shared with ``test_infer_spark.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from minutecast.keys import Keys
from minutecast.schemas import Bar, Forecast, WindowReady
from minutecast.settings import RedisSettings
from minutecast.topics import Topics
from minutecast.window import checksum, window_at
from streams.infer import JobConf, infer_partition
from streams.state import encode_value

pytestmark = pytest.mark.integration

T0 = 1_759_327_200  # 2025-10-01 14:00 UTC = 10:00 New York: one session, no date change for hours


def bars_for(ticker: str, minutes: range, seed: int = 0, published_at: float | None = None) -> list[Bar]:
    """Deterministic bars of ``ticker`` at T0 + 60*i for i in ``minutes``."""
    rng = np.random.default_rng([seed, *ticker.encode()])
    out = []
    for i in minutes:
        c = 100.0 + 10 * np.sin(i / 7 + len(ticker)) + rng.normal(0, 0.1)
        out.append(Bar(ticker, T0 + 60 * i, c, c + 0.2, c - 0.2, c, float(1000 + 10 * i), "test",
                       published_at=published_at if published_at is not None else time.time()))
    return out


def store_bars(client: Any, ns: str, bars: list[Bar]) -> None:
    """Write bars straight into the window hashes (the Faust app's storage format)."""
    keys = Keys(ns)
    pipe = client.pipeline(transaction=False)
    for b in bars:
        pipe.hset(keys.window(b.ticker), str(b.minute), encode_value(b))
    pipe.execute()


def ready_event(bars: list[Bar], ticker: str, i: int) -> WindowReady:
    """The window-ready event the Faust app would publish for ``ticker``'s window ending at T0+60*i."""
    rows = [(b.minute, b.close, b.volume) for b in bars if b.ticker == ticker]
    t = T0 + 60 * i
    w = window_at(rows, t)
    assert w is not None, f"no ready window at {i}"
    pub = next(b.published_at for b in bars if b.ticker == ticker and b.minute == t)
    return WindowReady(ticker, t, checksum(w), pub, time.time())


def events_frame(items: list[WindowReady | bytes]) -> pd.DataFrame:
    """Window-ready events as the Spark job hands them to the partition function."""
    recs = []
    for off, item in enumerate(items):
        raw = item if isinstance(item, bytes) else item.to_json()
        try:
            d = json.loads(raw)
        except ValueError:
            d = {}
        recs.append({"key": d.get("ticker"), "value": raw.decode(errors="replace"), "partition": 0, "offset": off,
                     "v": d.get("v"), "minute": d.get("minute"), "checksum": d.get("checksum"),
                     "published_at": d.get("published_at"), "ready_at": d.get("ready_at"), "ticker": d.get("ticker")})
    return pd.DataFrame(recs)


class Tally:
    """Stands in for Spark accumulators (same ``add`` interface)."""

    def __init__(self, zero: Any) -> None:
        self.value = zero

    def add(self, x: Any) -> None:
        if isinstance(self.value, dict):
            for k, v in x.items():
                self.value[k] = self.value.get(k, 0) + v
        else:
            self.value.extend(x)


def run_partition(conf: JobConf, items: list[WindowReady | bytes]) -> tuple[list[tuple[str, str, str]], dict]:
    stats, lat = Tally({}), Tally([])
    out = list(infer_partition(conf, stats, lat, iter([events_frame(items)])))
    rows = [tuple(r) for df in out for r in df.itertuples(index=False)]
    return rows, stats.value


def tiny_model_version(models_dir: Path, seed: int) -> str:
    """Save (not promote) a tiny LSTM(8)-Dense(1) with a fixed scaler; returns its version."""
    import tensorflow as tf

    from minutecast.features import Scaler
    from minutecast.registry import Registry

    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.Input((60, 2)), tf.keras.layers.LSTM(8), tf.keras.layers.Dense(1)])
    scaler = Scaler(ret_scale=0.001, logvol_mean=7.0, logvol_std=1.0, target_scale=0.002)
    return Registry(models_dir).save(model, scaler, {"test": True, "seed": seed})


def job_conf(ns: str, rs: RedisSettings, models_dir: Path, history_len: int = 120) -> JobConf:
    t = Topics(ns)
    return JobConf(namespace=ns, models_dir=str(models_dir), history_len=history_len, redis=rs,
                   forecasts_topic=t.forecasts, deadletter_topic=t.deadletter, ready_topic=t.ready)


def test_partition_accounting_idempotence_history(redis_client: Any, redis_settings: RedisSettings,
                                                  namespace: str, tmp_path: Path) -> None:
    keys, topics = Keys(namespace), Topics(namespace)
    bars = bars_for("AAA", range(75)) + bars_for("BBB", range(75)) + bars_for("CCC", range(75))
    store_bars(redis_client, namespace, bars)
    conf = job_conf(namespace, redis_settings, tmp_path / "models", history_len=3)  # no model: persistence

    items: list[WindowReady | bytes] = [
        ready_event(bars, "AAA", 65), ready_event(bars, "AAA", 64),  # 64 is superseded in the batch
        ready_event(bars, "BBB", 65),
        WindowReady("CCC", T0 + 60 * 30, "x", None, time.time()),  # before 60 minutes of session: state moved on
        WindowReady("DDD", T0 + 60 * 65, "x", None, time.time()),  # no window stored at all
        b'{"not json',
    ]
    rows, stats = run_partition(conf, items)
    fc = {r[1]: Forecast.from_json(r[2]) for r in rows if r[0] == topics.forecasts}
    dead = [json.loads(r[2]) for r in rows if r[0] == topics.deadletter]
    assert set(fc) == {"AAA", "BBB"}
    for f in fc.values():
        assert (f.as_of, f.model_version, f.model_kind) == (T0 + 60 * 65, "persistence", "persistence")
        assert f.predicted_close == f.last_close and f.published_at is not None
        assert f.window_ready_at <= f.forecast_at
    assert sorted(d["reason"] for d in dead) == ["not_json", "window_missing"]
    assert all(d["stage"] == "infer" and d["source_topic"] == topics.ready for d in dead)
    assert stats["events"] == 6 and stats["forecasts"] == 2 and stats["superseded_batch"] == 1
    assert stats["superseded_state"] == 1 and stats["dead_letter"] == 2 and stats["model:persistence"] == 2
    latest = redis_client.hgetall(keys.forecast("AAA"))
    assert int(latest[b"as_of"]) == T0 + 60 * 65
    assert Forecast.from_json(latest[b"json"]) == fc["AAA"]

    # A replayed batch (restart from the checkpoint) emits exactly what Redis kept the first time.
    rows2, stats2 = run_partition(conf, items)
    assert sorted(r for r in rows2 if r[0] == topics.forecasts) == sorted(r for r in rows if r[0] == topics.forecasts)
    assert stats2.get("forecasts", 0) == 0 and stats2["replayed"] == 2

    # An older as-of goes to history but never moves the latest forecast back.
    run_partition(conf, [ready_event(bars, "AAA", 62)])
    assert int(redis_client.hget(keys.forecast("AAA"), "as_of")) == T0 + 60 * 65
    # History is bounded to the newest history_len as-of minutes.
    for i in (70, 71, 72, 73):
        run_partition(conf, [ready_event(bars, "AAA", i)])
    hist = redis_client.hgetall(keys.forecast_history("AAA"))
    assert sorted(int(k) for k in hist) == [T0 + 60 * i for i in (71, 72, 73)]
    assert int(redis_client.hget(keys.forecast("AAA"), "as_of")) == T0 + 60 * 73


def test_partition_hot_reload_and_failed_load(redis_client: Any, redis_settings: RedisSettings, namespace: str,
                                              tmp_path: Path) -> None:
    from minutecast.registry import Registry

    models = tmp_path / "models"
    bars = bars_for("AAA", range(75)) + bars_for("BBB", range(75))
    store_bars(redis_client, namespace, bars)
    conf = job_conf(namespace, redis_settings, models)
    registry = Registry(models)

    def served(i: int) -> set[tuple[str, str]]:
        rows, _ = run_partition(conf, [ready_event(bars, "AAA", i), ready_event(bars, "BBB", i)])
        return {(Forecast.from_json(r[2]).model_version, Forecast.from_json(r[2]).model_kind) for r in rows}

    assert served(60) == {("persistence", "persistence")}
    v1 = tiny_model_version(models, seed=1)
    registry.promote(v1)
    assert served(61) == {(v1, "lstm")}
    v2 = tiny_model_version(models, seed=2)
    registry.promote(v2)
    assert served(62) == {(v2, "lstm")}
    # CURRENT pointing at a version that cannot load: the old model keeps serving.
    broken = tiny_model_version(models, seed=3)
    (models / broken / "model.keras").write_bytes(b"garbage")
    (models / "CURRENT").write_text(broken + "\n")
    assert served(63) == {(v2, "lstm")}
