"""training.data.read_topic against the real Kafka: looped replay copies are not training history, and a
minute's first bar wins (as in serving): the reader holds what the Redis window store holds for the same
records, conflicting duplicates left out and counted."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from minutecast.kafka import end_offsets, make_producer
from minutecast.keys import Keys
from minutecast.schemas import Bar
from minutecast.settings import KafkaSettings
from minutecast.topics import Topics
from producers.live import LOOP_SOURCE
from streams.window_store import WindowStore, read_windows
from training import data as D
from training.data import catalog

pytestmark = pytest.mark.integration
T0 = 1_759_325_400  # 2025-10-01 09:30 New York


def test_read_topic_leaves_out_looped_copies_and_keeps_first_values(kafka: KafkaSettings, topics: Topics) -> None:
    producer = make_producer(kafka)
    bars = [Bar("AAPL", T0 + 60 * i, 100.0, 101.0, 99.0, 100.5, 10.0, "replay") for i in range(70)]
    bars.append(Bar("AAPL", T0 + 60 * 10, 200.0, 201.0, 199.0, 200.5, 10.0, "replay"))  # a later duplicate
    bars += [Bar("AAPL", T0 + 86_400 + 60 * i, 100.0, 101.0, 99.0, 100.5, 10.0, LOOP_SOURCE) for i in range(5)]
    for b in bars:
        producer.produce(topics.bars, key=b.ticker, value=b.to_json(), partition=0)
    assert producer.flush(30) == 0
    got, rng = D.read_topic(kafka, topics.bars, end_offsets(kafka, topics.bars))
    assert rng.bars == 71 and len(got["AAPL"].minutes) == 70  # the 5 looped bars are left out, the repeat too
    assert (rng.conflicts, rng.duplicates) == (1, 0)
    s = catalog(got, None).series["AAPL"]
    assert len(s.minutes) == 70 and s.close[10] == 100.5  # the first value of the minute wins


def test_read_topic_holds_what_the_window_store_holds(kafka: KafkaSettings, topics: Topics,
                                                      redis_client: Any, namespace: str) -> None:
    rng = random.Random(18)
    bars = []
    for t in ("AAPL", "MSFT", "NVDA", "TSLA"):
        for k in range(40):  # 40 minutes, repeated: the same values (maybe re-published), or others
            c = 100.0 + k / 7
            bars.append(Bar(t, T0 + 60 * k, c, c * 1.001, c * 0.999, c, 10.0 + k, "replay", 1.75e9))
            if rng.random() < 0.3:
                bars.append(Bar(t, T0 + 60 * k, c, c * 1.001, c * 0.999, c, 10.0 + k, "replay", 1.75e9 + 1))
            if rng.random() < 0.3:
                bars.append(Bar(t, T0 + 60 * k, c, c * 1.002, c * 0.999, c * 1.001, 10.0 + k, "replay", 1.75e9))
    rng.shuffle(bars)
    producer = make_producer(kafka)
    for b in bars:
        producer.produce(topics.bars, key=b.ticker, value=b.to_json())  # keyed: a ticker's order is kept
    assert producer.flush(30) == 0
    got, krange = D.read_topic(kafka, topics.bars, end_offsets(kafka, topics.bars))
    keys = Keys(namespace)
    _, _, conflicts = WindowStore(redis_client, keys, 600).apply(bars)
    stored = read_windows(redis_client, keys, sorted(got))
    assert krange.conflicts == len(conflicts) > 0 and krange.bars == len(bars)
    for t, s in got.items():
        order = np.argsort(s.minutes)
        rows = np.array([r[:6] for r in stored[t]])
        np.testing.assert_array_equal(s.minutes[order], rows[:, 0].astype(np.int64))
        np.testing.assert_array_equal(s.ohlcv[order], rows[:, 1:])
