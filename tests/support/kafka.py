"""Reading a topic back and a consumer group's progress, for tests against the real broker."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import pandas as pd
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import ConfigResource
from tenacity import retry, retry_if_exception, stop_after_delay, wait_fixed

from minutecast.kafka import end_offsets, make_consumer
from minutecast.settings import KafkaSettings, StreamSettings
from producers.bars import COLUMNS


def read_topic(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` (up to the end offsets seen now)."""
    c = make_consumer(kafka, group=f"reader-{time.time_ns()}")
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        todo = {p for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    out.append((m.key(), m.value()))
                    if m.offset() >= ends[m.partition()] - 1:
                        todo.discard(m.partition())
        return out
    finally:
        c.close()


def committed(ks: KafkaSettings, group: str, topic: str, ends: dict[int, int]) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (-1001 = none yet)."""
    consumer = make_consumer(ks, group=group)
    try:
        return {tp.partition: tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in ends],
                                                                     timeout=10)}
    finally:
        consumer.close()


def committed_all(kafka: KafkaSettings, namespace: str, topic: str) -> bool:
    """True when the worker group's committed offsets reached the end of every partition."""
    group = f"{StreamSettings().app_id}-{namespace}"
    c = make_consumer(kafka, group=group)
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        tps = [TopicPartition(topic, p) for p in parts]
        for tp in c.committed(tps, timeout=10):
            low, high = c.get_watermark_offsets(tp, timeout=10)
            if high > low and tp.offset < high:  # an empty partition has nothing to commit
                return False
        return True
    finally:
        c.close()


def topic_bars(ks: KafkaSettings, topic: str) -> pd.DataFrame:
    """Every bar on ``topic`` (ticker, time, prices, volume, and ``minute`` in epoch s), in offset order per
    partition."""
    ends = end_offsets(ks, topic)
    consumer = make_consumer(ks, group=f"topic-bars-{time.time_ns()}")
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(rows) < sum(ends.values()) and time.monotonic() < deadline:
        rows += [json.loads(m.value()) for m in consumer.consume(1000, timeout=1) if m.error() is None]
    consumer.close()
    df = pd.DataFrame(rows, columns=["ticker", "time", "open", "high", "low", "close", "volume"])
    df["minute"] = df["time"].map(lambda s: int(datetime.fromisoformat(s).timestamp())).astype("int64")
    return df


def topic_rows(ks: KafkaSettings, topic: str) -> pd.DataFrame:
    """Every bar on ``topic`` in the recorded files' columns (``producers.bars.COLUMNS``: ticker, minute, prices,
    volume), in offset order per partition."""
    return topic_bars(ks, topic)[COLUMNS]


def _unknown_topic(exc: BaseException) -> bool:
    return isinstance(exc, KafkaException) and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


@retry(retry=retry_if_exception(_unknown_topic), stop=stop_after_delay(30), wait=wait_fixed(0.5), reraise=True)
def topic_config(admin: Any, topic: str) -> Any:
    """The topic's config. Right after creation a broker that has not applied the new metadata yet (KRaft
    propagates it asynchronously) answers "unknown topic": asked again until it knows it (30 s at most)."""
    return next(iter(admin.describe_configs([ConfigResource("topic", topic)]).values())).result(timeout=30)


class _NotReplicated(Exception):
    pass


@retry(retry=retry_if_exception(lambda e: isinstance(e, (_NotReplicated, KafkaException))), stop=stop_after_delay(60),
       wait=wait_fixed(0.5), reraise=True)
def replicated_partitions(admin: Any, topic: str, partitions: int, replicas: int) -> dict[int, Any]:
    """The topic's partition metadata once every one of ``partitions`` has a leader, ``replicas`` replicas and all
    of them in sync. Right after creation the broker answering may list only the partitions it has applied so far
    (KRaft propagates new topics asynchronously): asked again until the picture is whole (60 s at most)."""
    md = admin.list_topics(topic, timeout=30).topics[topic]
    parts = md.partitions
    whole = (md.error is None and sorted(parts) == list(range(partitions))
             and all(p.error is None and p.leader >= 0 and len(p.replicas) == replicas and len(p.isrs) == replicas
                     for p in parts.values()))
    if not whole:
        raise _NotReplicated(f"{topic}: {len(parts)} of {partitions} partitions listed, "
                             f"isrs {[len(p.isrs) for p in parts.values()]}")
    return dict(parts)
