"""The real local services: produce/consume through the broker, Redis with its password."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest
import redis as redislib

from minutecast.kafka import make_admin, make_consumer, make_producer
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings
from minutecast.topics import Topics

pytestmark = pytest.mark.integration


def test_produce_and_consume_through_real_broker(kafka: KafkaSettings, topics: Topics) -> None:
    producer = make_producer(kafka)
    sent = {f"K{i}": f"v{i}".encode() for i in range(50)}
    delivered: list[object] = []
    for k, v in sent.items():
        producer.produce(topics.bars, key=k, value=v, on_delivery=lambda e, m: delivered.append(e))
    assert producer.flush(30) == 0
    assert delivered == [None] * 50
    consumer = make_consumer(kafka, group=f"g-{uuid.uuid4().hex}")
    consumer.subscribe([topics.bars])
    got: dict[str, bytes] = {}
    deadline = time.monotonic() + 60
    while len(got) < 50 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is not None and msg.error() is None:
            got[msg.key().decode()] = msg.value()
    consumer.close()
    assert got == sent


def test_redis_requires_password(redis_settings: RedisSettings, redis_client: redislib.Redis,
                                 namespace: str) -> None:
    redis_client.set(f"{namespace}:hello", b"world")
    assert redis_client.get(f"{namespace}:hello") == b"world"
    anonymous = redislib.Redis(host=redis_settings.host, port=redis_settings.port)
    with pytest.raises(redislib.AuthenticationError):
        anonymous.get(f"{namespace}:hello")
    assert redis_client.config_get("appendonly")["appendonly"] == "yes"


def test_infra_cli_status_and_idempotent_up(services: InfraSettings) -> None:
    out = subprocess.run([sys.executable, "-m", "minutecast.cli", "infra", "up"], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    assert "kafka  up" in out and "4.3.1" in out and "redis  up" in out
    status = subprocess.run([sys.executable, "-m", "minutecast.cli", "infra", "status"],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert status.splitlines()[0].split()[:3] == ["kafka", "up", "4.3.1"]
    assert status.splitlines()[1].split()[:2] == ["redis", "up"]


def test_infra_topics_creates_missing_topics_once(services: InfraSettings, namespace: str) -> None:
    cmd = [sys.executable, "-m", "minutecast.cli", "infra", "topics"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    t = Topics(namespace)
    names = [spec.name for spec in t.specs()]
    try:
        assert all(n in first for n in names)
        md = make_admin(services.kafka).list_topics(timeout=10)
        assert len(md.topics[t.bars].partitions) == services.bar_partitions
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
        assert "none, all existed" in second
    finally:
        admin = make_admin(services.kafka)  # kept referenced until the futures resolve
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            fut.result()
