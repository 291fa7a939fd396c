"""A benchmark's uuid namespace removed afterwards: its Redis keys and its topics (shared by the benchmarks that
run the pipeline in one)."""

from __future__ import annotations

import sys

from minutecast.kafka import make_admin
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.settings import KafkaSettings, RedisSettings
from minutecast.topics import Topics


def delete_namespace(redis: RedisSettings, kafka: KafkaSettings, ns: str) -> None:
    """Delete every Redis key and every topic of namespace ``ns``."""
    client = connect(redis)
    found = list(client.scan_iter(match=Keys(ns).namespace_pattern(), count=1000))
    for i in range(0, len(found), 1000):
        client.delete(*found[i:i + 1000])
    admin = make_admin(kafka)  # keep a reference: the futures fail if the handle is collected
    futures = admin.delete_topics([s.name for s in Topics(ns).specs()], operation_timeout=30)
    for fut in futures.values():
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - best effort: a leftover uuid topic harms nothing
            print(f"could not delete a topic: {exc}", file=sys.stderr)
