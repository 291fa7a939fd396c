"""Feature parity: the training sample for a window equals, bit for bit, the serving input built from the same
bars stored the way the Faust app stores them in Redis (hash ``Keys(ns).window(T)``, field = minute epoch
seconds, value = ``f"{open!r} {high!r} {low!r} {close!r} {volume!r} {published_at!r}"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from minutecast.features import make_inputs
from minutecast.keys import Keys
from minutecast.schemas import Bar, parse_bar
from minutecast.window import RETAIN, WINDOW, window_at
from training import data as D

pytestmark = pytest.mark.integration

TICKER = "NVDA"


def test_training_sample_equals_serving_input_from_redis(shared_data: Path, redis_client, namespace: str) -> None:
    import pandas as pd

    # Three trading dates of real bars, passed through the Kafka message format (JSON and back) as both the
    # trainer and the Faust app receive them.
    df = pd.read_csv(shared_data / f"{TICKER}.csv.gz").dropna().iloc[:2200]
    minutes = (pd.to_datetime(df["Datetime"], utc=True).astype("int64") // 10**9).to_numpy()
    bars = []
    for m, o, h, lo, c, v in zip(minutes, df["Open"], df["High"], df["Low"], df["Close"], df["Volume"], strict=True):
        bar = Bar(TICKER, int(m), float(o), float(h), float(lo), float(c), float(v), "test", published_at=1.5e9 + m)
        bars.append(parse_bar(bar.to_json(), TICKER))
    by_minute = {b.minute: b for b in bars}

    # Training side: the trainer's sample construction and the fitted scaler.
    series = D.Series(np.array([b.minute for b in bars]), np.array([b.close for b in bars]),
                      np.array([b.volume for b in bars]))
    samples = D.build_samples({TICKER: series})
    assert len(samples) > 1000
    scaler = D.scaler_from_stats(D.scaler_stats(samples))
    train_inputs = make_inputs(samples.windows, scaler)

    # Serving side: for several windows (pre-market with gaps, the open, mid-day, the last), write the Redis hash
    # as the Faust app holds it when minute t arrives (the last RETAIN minutes up to t), read it back, parse.
    picks = sorted({0, 1, len(samples) // 3, len(samples) // 2, len(samples) - 1,
                    *np.random.default_rng(0).choice(len(samples), 10, replace=False).tolist()})
    key = Keys(namespace).window(TICKER)
    for i in picks:
        t = int(samples.ends[i])
        redis_client.delete(key)
        fields = {str(m): f"{b.open!r} {b.high!r} {b.low!r} {b.close!r} {b.volume!r} {b.published_at!r}"
                  for m, b in by_minute.items() if t - 60 * RETAIN < m <= t}
        redis_client.hset(key, mapping=fields)
        rows = []
        for field, value in redis_client.hgetall(key).items():
            _o, _h, _l, close, volume, _p = value.decode().split(" ")
            rows.append((int(field), float(close), float(volume)))
        window = window_at(rows, t)
        assert window is not None, f"window at {t} not ready from Redis"
        assert window.shape == (WINDOW, 2)
        assert window.tobytes() == samples.windows[i].tobytes()  # raw window identical
        serving_input = make_inputs(window[None], scaler)
        assert serving_input.tobytes() == train_inputs[i:i + 1].tobytes()  # model input identical, bit for bit
