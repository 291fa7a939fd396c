"""A benchmark's uuid namespace removed afterwards: its Redis keys and its topics (shared by the benchmarks that
run the pipeline in one)."""

from __future__ import annotations

import sys

from minutecast.kafka import delete_namespace_topics
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.settings import KafkaSettings, RedisSettings


def delete_namespace(redis: RedisSettings, kafka: KafkaSettings, ns: str) -> None:
    """Delete every Redis key and every topic of namespace ``ns``."""
    client = connect(redis)
    found = list(client.scan_iter(match=Keys(ns).namespace_pattern(), count=1000))
    for i in range(0, len(found), 1000):
        client.delete(*found[i:i + 1000])
    try:
        delete_namespace_topics(kafka, ns)
    except Exception as exc:  # noqa: BLE001 - reported; leftover topics load the broker (delete_namespace_topics)
        print(f"could not delete the topics of {ns}: {exc}", file=sys.stderr)
