"""Reading a topic back and a consumer group's progress, for tests against the real broker."""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from minutecast.kafka import make_consumer
from minutecast.settings import KafkaSettings, StreamSettings


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
