"""Redis losing acknowledged writes (the un-fsynced tail of its AOF) and the repair from Kafka
(:mod:`streams.repair`), against a real broker and a private redis-server that is SIGKILLed and whose AOF
is cut back as a machine crash would leave it.

* windows: the worker's batch code with its repair ends in the windows of a run without the fault; the
  same batches without the repair do not (so the check sees the loss);
* forecasts: the Spark job's partition code and driver check restore history and latest forecasts as they
  were published, and the calibration state of a run without the fault; without the check they are behind.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from infra.services import LocalRedis
from minutecast.forecast_store import ForecastStore
from minutecast.kafka import ensure_topics, make_consumer, make_producer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.settings import KafkaSettings, RedisSettings, StreamSettings
from minutecast.topics import Topics
from streams.batch import BatchProcessor, Message
from streams.repair import BarRepair, repair_forecasts
from streams.window_store import StateBehind, WindowStore
from tests.support.bars import interleaved, windows
from tests.support.inference import MARKET, bars_for, ready_event, store_bars
from tests.support.kafka import read_topic
from tests.support.partition import forecast_rows, job_conf, run_partition
from tests.support.services import aof_mark, kill_pidfile, lose_unsynced_writes

pytestmark = [pytest.mark.integration, pytest.mark.faults]
TICKERS = ("AAPL", "MSFT", "NVDA")
BATCH = 12  # records per worker batch


def crash(server: LocalRedis, mark: tuple[Path, int]) -> int:
    """SIGKILL the redis-server, cut its AOF back to ``mark`` (the fsynced part), start it again."""
    kill_pidfile(server.pidfile, server.s.redis.port)
    lost = lose_unsynced_writes(mark)
    server.up()
    return lost


def topic_messages(kafka: KafkaSettings, topic: str, n: int) -> list[Message]:
    """The first ``n`` records of ``topic`` (partition 0) as the worker's batch code gets them."""
    c = make_consumer(kafka, group=f"read-{uuid.uuid4().hex[:8]}")
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[Message] = []
    deadline = time.monotonic() + 60
    while len(out) < n and time.monotonic() < deadline:
        for m in c.consume(500, timeout=1.0):
            if m.error() is None:
                out.append(Message(m.key(), m.value(), topic, m.partition(), m.offset()))
    c.close()
    assert len(out) == n
    return out


@pytest.fixture
def bar_topic(kafka: KafkaSettings, namespace: str) -> Iterator[tuple[str, list[Message]]]:
    ns = namespace  # its topics are deleted after the test (conftest's namespace fixture)
    topics = Topics(ns)
    ensure_topics(kafka, topics.specs(1, 1))
    bars = interleaved(TICKERS, 120)
    p = make_producer(kafka)
    for b in bars:
        p.produce(topics.bars, b.to_json(), b.ticker.encode())
    assert p.flush(30) == 0
    yield ns, topic_messages(kafka, topics.bars, len(bars))


def test_store_refuses_a_batch_past_its_applied_record(redis_client: Any, namespace: str) -> None:
    store = WindowStore(redis_client, Keys(namespace), 3600)
    bars = bars_for("AAA", range(0, 30))
    with pytest.raises(StateBehind) as first:  # no record at all: nothing is written
        store.apply(bars[:10], messages=10, offsets={0: (0, 9)})
    assert first.value.gaps[0].applied is None and not store.has_windows()
    store.mark_applied({0: -1})  # the topic starts at 0: nothing before it
    store.apply(bars[:10], messages=10, offsets={0: (0, 9)})
    assert store.applied() == {0: 9}
    with pytest.raises(StateBehind) as behind:
        store.apply(bars[15:20], messages=5, offsets={0: (15, 19)})
    assert (behind.value.gaps[0].applied, behind.value.gaps[0].first) == (9, 15)
    store.apply(bars[5:12], messages=7, offsets={0: (5, 11)})  # a replay overlapping the record: fine
    store.mark_applied({0: 3})  # never down
    assert store.applied() == {0: 11}


def test_windows_repaired_after_redis_loses_its_unsynced_writes(
        bar_topic: tuple[str, list[Message]], kafka: KafkaSettings,
        private_redis: tuple[LocalRedis, RedisSettings]) -> None:
    ns, msgs = bar_topic
    server, rs = private_redis
    variants = {"repair": ns, "none": f"{ns}n", "reference": f"{ns}r"}

    def processor(v: str) -> BatchProcessor:
        settings = StreamSettings(namespace=ns, redis=rs, kafka=kafka)  # the repair reads `ns`'s bar topic
        store = WindowStore(connect(rs), Keys(variants[v]), 3600)
        return BatchProcessor(store, repair=BarRepair(settings, store) if v == "repair" else None)

    def run(procs: dict[str, BatchProcessor], part: list[Message]) -> None:
        for i in range(0, len(part), BATCH):
            for pr in procs.values():
                pr.process_isolating(part[i:i + BATCH])

    before, lost_part, after = msgs[:240], msgs[240:276], msgs[276:]
    procs = {v: processor(v) for v in variants}
    run(procs, before)
    mark = aof_mark(server.data)  # fsynced up to here; the next three batches only reached the page cache
    run({v: procs[v] for v in ("repair", "none")}, lost_part)
    client = connect(rs)
    held = sum(len(w) for w in windows(client, variants["repair"]).values())
    lost = crash(server, mark)
    client = connect(rs)
    assert lost > 0 and sum(len(w) for w in windows(client, variants["repair"]).values()) < held, \
        "the crash lost nothing: the test would not see a missing repair"
    procs = {v: processor(v) for v in variants}  # the worker reconnects (a retried batch)
    run({"reference": procs["reference"]}, lost_part)
    run(procs, after)
    ref = windows(client, variants["reference"])
    assert windows(client, variants["repair"]) == ref
    assert int(client.hget(Keys(variants["repair"]).stats(), "stream_repairs") or 0) == 1
    assert procs["repair"].store.applied() == {0: len(msgs) - 1}
    assert windows(client, variants["none"]) != ref  # without the repair the loss stays


def test_forecasts_restored_after_redis_loses_its_unsynced_writes(
        kafka: KafkaSettings, tmp_path: Path, private_redis: tuple[LocalRedis, RedisSettings], namespace: str) -> None:
    server, rs = private_redis
    ns, ref_ns = namespace, f"{namespace}r"  # the reference has Redis keys only, no topics
    topics = Topics(ns)
    ensure_topics(kafka, topics.specs(1, 1))
    tickers = ("AAA", "BBB", MARKET)
    bars = [b for t in tickers for b in bars_for(t, range(0, 150))]
    producer = make_producer(kafka)
    client = connect(rs)
    for n in (ns, ref_ns):
        store_bars(client, n, bars)
    confs = {n: job_conf(n, rs, tmp_path / "models") for n in (ns, ref_ns)}

    def minute(i: int, names: tuple[str, ...], check: bool = True) -> None:
        for n in names:
            c = connect(rs)
            run_id = repair_forecasts(c, kafka, n, confs[n].history_len, 3600) if check and n == ns else None
            rows, _ = run_partition(confs[n], [ready_event(bars, t, i) for t in tickers])
            if n == ns:  # the job's Kafka sink, then the listener's progress record
                for topic, key, value in forecast_rows(rows, topics):
                    producer.produce(topic, value.encode(), key.encode())
                assert producer.flush(30) == 0
                c.hset(Keys(n).infer_progress(), mapping={"at": time.time(), "redis_run_id": run_id or ""})

    for i in range(60, 100):
        minute(i, (ns, ref_ns))
    mark = aof_mark(server.data)
    for i in range(100, 106):  # reach the page cache only; the reference makes these after the crash
        minute(i, (ns,))
    keys = Keys(ns)
    store = ForecastStore(keys)
    hist_before = len(store.history_now(client, "AAA"))
    crash(server, mark)
    client = connect(rs)
    assert len(store.history_now(client, "AAA")) < hist_before, "the crash lost no forecast"
    for i in range(100, 106):
        minute(i, (ref_ns,))
    for i in range(106, 120):
        minute(i, (ns, ref_ns))
    published: dict[str, dict[int, bytes]] = {}
    records = read_topic(kafka, topics.forecasts, timeout=30)
    assert len(records) == 60 * len(tickers)  # one forecast per ticker and minute, each published once
    for _, value in records:
        d = json.loads(value)
        published.setdefault(d["ticker"], {})[int(d["as_of"])] = value
    for t in tickers:
        hist = store.history_now(client, t)
        assert hist == published[t], f"{t}: history is not what was published"
        assert store.latest_now(client, t) == published[t][max(published[t])]
        assert store.calibration_now(client, t) == ForecastStore(Keys(ref_ns)).calibration_now(client, t)
    assert int(client.hget(keys.stats(), "infer_restored") or 0) > 0
