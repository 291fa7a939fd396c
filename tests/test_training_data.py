"""training.data.read_topic against the real Kafka: looped replay copies are not training history, and a
minute's first bar wins (as in serving)."""

from __future__ import annotations

import pytest

from minutecast.kafka import end_offsets, make_producer
from minutecast.schemas import Bar
from minutecast.settings import KafkaSettings
from minutecast.topics import Topics
from producers.live import LOOP_SOURCE
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
    assert rng.bars == 71 and len(got["AAPL"].minutes) == 71  # the 5 looped bars are left out
    s = catalog(got, None).series["AAPL"]
    assert len(s.minutes) == 70 and s.close[10] == 100.5  # the first value of the minute wins
