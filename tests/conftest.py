"""Shared fixtures: the real local Kafka and Redis (started once per session, or reused), a fresh
namespace per test (uuid topic names and Redis key prefix), and the shared real market data.

Under CI (``CI=true``) a service that cannot be started fails the test; elsewhere it skips.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings
from minutecast.topics import Topics

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]
# Python workers of Spark (and horovodrun's ranks) must use this interpreter, not python3 on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def unavailable(msg: str) -> None:
    """A missing service: a failure under CI, a skip on a developer's machine."""
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data/bars-1m`` (real Q4 2025 bars, 20 tickers); ``MINUTECAST_SHARED_DATA`` overrides."""
    path = Path(os.environ.get("MINUTECAST_SHARED_DATA", REPO.parent / "shared" / "data" / "bars-1m"))
    if not path.is_dir():
        unavailable(f"shared market data not found at {path}")
    return path


@pytest.fixture(scope="session")
def services() -> InfraSettings:
    """Start (or reuse) the real local Kafka broker and Redis server for the whole session."""
    from infra import services as infra_services
    from minutecast.errors import MinutecastError

    s = InfraSettings()
    try:
        rows = infra_services.up(s, create_topics=False)
    except MinutecastError as exc:
        unavailable(f"local Kafka/Redis could not be started: {exc}")
    if not all(r.up for r in rows):
        unavailable("services not up: " + "; ".join(r.line() for r in rows))
    return InfraSettings()  # re-read: the Redis password file exists now


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh namespace for this test, exported so subprocesses use it too."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MINUTECAST_NAMESPACE", ns)
    return ns


@pytest.fixture
def kafka(services: InfraSettings) -> KafkaSettings:
    return services.kafka


@pytest.fixture
def redis_settings(services: InfraSettings) -> RedisSettings:
    return services.redis


@pytest.fixture
def topics(services: InfraSettings, namespace: str) -> Iterator[Topics]:
    """This test's topics, created with 3 partitions; deleted afterwards."""
    from minutecast.kafka import ensure_topics, make_admin

    t = Topics(namespace)
    specs = t.specs(bar_partitions=3)
    ensure_topics(services.kafka, specs)
    yield t
    admin = make_admin(services.kafka)  # kept referenced until the futures resolve
    futures = admin.delete_topics([s.name for s in specs], operation_timeout=30)
    for fut in futures.values():
        try:
            fut.result()
        except Exception:  # noqa: BLE001, S110 - best-effort cleanup; a leftover uuid topic harms nothing
            pass


@pytest.fixture
def redis_client(services: InfraSettings, namespace: str) -> Iterator[object]:
    """A client on the real Redis; this namespace's keys are deleted afterwards."""
    from minutecast.redis import connect

    client = connect(services.redis)
    yield client
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
