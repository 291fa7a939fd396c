"""Shared fixtures: the real local Kafka and Redis (started once per session, or reused), a fresh
namespace per test (uuid topic names and Redis key prefix), and the shared real market data.

Under CI (``CI=true``) a service that cannot be started fails the test; elsewhere it skips.

Markers (pyproject.toml lists them; ``tensorflow`` is registered here): a test that talks to a service is
``integration``. ``compose``, ``spark``, ``horovod`` and ``tensorflow`` (builds or loads a Keras model) imply
``integration``, so ``make test-fast`` (``-m "not integration"``) runs none of them; ``-m compose`` (``make
compose-test``) and a run without ``-m`` (``make test``) select them as before. Helpers shared by several
test modules live in ``tests/support/`` (no test module imports another one); the compose file's fixtures
come from ``tests/support/compose.py``, loaded as a plugin below.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra import services as infra_services
from minutecast.errors import MinutecastError
from minutecast.kafka import delete_namespace_topics, ensure_topics
from minutecast.redis import connect
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings
from minutecast.topics import Topics
from tests.support.services import free_port, unavailable

pytest_plugins = ["tests.support.compose"]

REPO = Path(__file__).resolve().parents[1]
# Markers that imply `integration`: what they start or load is too slow or needs services.
IMPLIES_INTEGRATION = ("compose", "spark", "horovod", "tensorflow")
# Python workers of Spark (and horovodrun's ranks) must use this interpreter, not python3 on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tensorflow: builds or loads a Keras model (imports TensorFlow)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("integration") is None and any(
                item.get_closest_marker(name) is not None for name in IMPLIES_INTEGRATION):
            item.add_marker(pytest.mark.integration)


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
    s = InfraSettings()
    try:
        rows = infra_services.up(s, create_topics=False)
    except MinutecastError as exc:
        unavailable(f"local Kafka/Redis could not be started: {exc}")
    if not all(r.up for r in rows):
        unavailable("services not up: " + "; ".join(r.line() for r in rows))
    return InfraSettings()  # re-read: the Redis password file exists now


@pytest.fixture
def namespace(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test, exported so subprocesses use it too. A test on the real services
    has every topic of it deleted afterwards, also those its subprocesses created (a full run left ~600)."""
    ns = f"t{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("MINUTECAST_NAMESPACE", ns)
    yield ns
    if "services" in request.fixturenames:
        try:
            delete_namespace_topics(request.getfixturevalue("services").kafka, ns, timeout_s=10)
        except Exception as exc:  # noqa: BLE001 - a test that stopped the broker on purpose leaves its topics
            print(f"topics of {ns} not deleted: {exc}", file=sys.stderr)


@pytest.fixture
def kafka(services: InfraSettings) -> KafkaSettings:
    return services.kafka


@pytest.fixture
def redis_settings(services: InfraSettings) -> RedisSettings:
    return services.redis


@pytest.fixture
def topics(services: InfraSettings, namespace: str) -> Iterator[Topics]:
    """This test's topics, created with 3 partitions (deleted afterwards by :func:`namespace`)."""
    t = Topics(namespace)
    specs = t.specs(bar_partitions=3)
    ensure_topics(services.kafka, specs)
    yield t  # deleted with the namespace's other topics (the namespace fixture)


@pytest.fixture
def redis_client(services: InfraSettings, namespace: str) -> Iterator[object]:
    """A client on the real Redis; this namespace's keys are deleted afterwards."""
    client = connect(services.redis)
    yield client
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def private_redis(tmp_path: Path, services: InfraSettings,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[infra_services.LocalRedis, RedisSettings]]:
    """A redis-server of this test's own (own port, own data) that it may stop and fill."""
    password = "poison-" + os.urandom(6).hex()
    monkeypatch.setenv("MINUTECAST_REDIS_PASSWORD", password)  # LocalRedis writes requirepass from it
    s = InfraSettings(home=tmp_path / "redis-home", redis=RedisSettings(port=free_port(), password=SecretStr(password)),
                      start_timeout_s=60)
    server = infra_services.LocalRedis(s)
    server.up()
    try:
        yield server, s.redis
    finally:
        server.down()
