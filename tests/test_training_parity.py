"""Feature parity: the training sample for a window equals, bit for bit, the serving input built from the same
bars stored the way the Faust app stores them in Redis (written by :class:`streams.window_store.WindowStore` into
``Keys(ns).window(T)``: the newest ``RETAIN`` bars in the binary layout), market context included (the market
ticker's value, read in the same pipelined round trip as the Spark job does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from minutecast.features import Scaler, make_inputs
from minutecast.keys import Keys
from minutecast.schemas import Bar, parse_bar
from minutecast.window import GAP, N_COLUMNS, OPEN_MIN, WINDOW, minute_of_day, regular_hours
from streams.window_store import WindowStore, read_windows
from streams.windows import window_for
from training import data as D

pytestmark = pytest.mark.integration

TICKER, MARKET = "CRM", "SPY"  # CRM: a less liquid name with sparse extended hours (collapsed gaps)


def kafka_bars(shared_data: Path, ticker: str, n: int) -> list[Bar]:
    """The first ``n`` recorded bars of ``ticker``, passed through the Kafka message format (JSON and back)."""
    df = pd.read_csv(shared_data / f"{ticker}.csv.gz").dropna().iloc[:n]
    minutes = (pd.to_datetime(df["Datetime"], utc=True).astype("int64") // 10**9).to_numpy()
    out = []
    for m, o, h, lo, c, v in zip(minutes, df["Open"], df["High"], df["Low"], df["Close"], df["Volume"], strict=True):
        bar = Bar(ticker, int(m), float(o), float(h), float(lo), float(c), float(v), "test", published_at=m + 61.5)
        out.append(parse_bar(bar.to_json(), ticker))
    return out


def series(bars: list[Bar]) -> D.Series:
    return D.Series(np.array([b.minute for b in bars]),
                    np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars]))


def store_as_faust(redis_client, keys: Keys, bars: list[Bar], t: int) -> None:
    """The store as the Faust app holds it once minute ``t`` arrived in order: the newest RETAIN bars <= t,
    written by the window store itself."""
    redis_client.delete(keys.window(bars[0].ticker))
    WindowStore(redis_client, keys, 3600).apply([b for b in bars if b.minute <= t])


def test_training_sample_equals_serving_input_from_redis(shared_data: Path, redis_client, namespace: str) -> None:
    bars, market = kafka_bars(shared_data, TICKER, 2500), kafka_bars(shared_data, MARKET, 4000)
    samples = D.build_samples({TICKER: series(bars), MARKET: series(market)}, MARKET)
    samples = samples.take(np.flatnonzero(samples.tickers == TICKER))
    assert len(samples) > 1500
    scaler = Scaler.fit(samples.windows, samples.targets)
    train_inputs = make_inputs(samples.windows, scaler)

    # Windows at the first ready bar, across the overnight gap (the opening minutes), mid-day, the last one,
    # pre-market with collapsed gaps, and random ones.
    ends = samples.ends
    opening = np.flatnonzero(regular_hours(ends) & (samples.windows[:, :, GAP].sum(axis=1) > 0))[:5].tolist()
    pre_market = np.flatnonzero(minute_of_day(ends) < OPEN_MIN)[:3].tolist()
    picks = sorted({0, 1, len(samples) // 2, len(samples) - 1, *opening, *pre_market,
                    *np.random.default_rng(0).choice(len(samples), 10, replace=False).tolist()})
    keys = Keys(namespace)
    for i in picks:
        t = int(ends[i])
        store_as_faust(redis_client, keys, bars, t)
        store_as_faust(redis_client, keys, market, t)
        stored = read_windows(redis_client, keys, [TICKER, MARKET])  # one pipelined round trip
        window = window_for(stored[TICKER], t, stored[MARKET])
        assert window is not None, f"window at {t} not ready from Redis"
        assert window.shape == (WINDOW, N_COLUMNS)
        assert window.tobytes() == samples.windows[i].tobytes(), f"raw window differs at {t}"
        serving_input = make_inputs(window[None], scaler)
        assert serving_input.tobytes() == train_inputs[i:i + 1].tobytes()  # model input identical, bit for bit
    assert opening and pre_market, "no window reaching across a collapsed gap / in pre-market was checked"
