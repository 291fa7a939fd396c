"""Scale-out on Spark's own engine: a standalone master and two workers (``infra/spark_cluster.py``, Spark's
``spark-class ...deploy.master.Master`` / ``...deploy.worker.Worker`` from the pyspark package), and
``minutecast infer --master spark://...`` producing the same forecasts as local mode on the same input.

Same window-ready events, same windows in Redis, same promoted model: one run in ``local[*]``, then the
forecast state is cleared and the same events are run on the cluster (its own checkpoint). Every field
of every forecast but ``forecast_at`` (the wall clock) is equal, and the master lists the job as an
application that ran on its workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from infra.spark_cluster import Cluster
from minutecast.kafka import make_consumer, make_producer
from minutecast.keys import Keys
from minutecast.registry import Registry
from minutecast.schemas import Forecast
from minutecast.settings import KafkaSettings, RedisSettings
from minutecast.topics import Topics
from tests.support.inference import MARKET, bars_for, ready_event, store_bars, tiny_model_version
from tests.support.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.spark, pytest.mark.tensorflow, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TICKERS = ["AAA", "BBB", "CCC", "DDD"]
WAIT_S = 300  # generous: a shared 2-core machine; nothing here is a timing assertion


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "cluster", port=free_port(), ui_port=free_port())
    try:
        c.up(workers=2, cores=1, memory="1g", timeout_s=WAIT_S)
        yield c
    finally:
        c.down()


def forecasts(kafka: KafkaSettings, topics: Topics, want: int) -> list[Forecast]:
    consumer = make_consumer(kafka, f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topics.forecasts])
    got: list[Forecast] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < want and time.monotonic() < deadline:
            got += [Forecast.from_json(m.value()) for m in consumer.consume(100, timeout=1.0) if not m.error()]
    finally:
        consumer.close()
    return got


def infer(env: dict[str, str], checkpoint: Path, master: str | None = None) -> str:
    cmd = [sys.executable, "-m", "minutecast.cli", "infer", "--available-now", "--metrics-port", "0",
           "--checkpoint", str(checkpoint)] + (["--master", master] if master else [])
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return "\n".join(line for line in proc.stderr.splitlines() if "minutecast.infer" in line)


def comparable(f: Forecast) -> dict[str, Any]:
    return {k: v for k, v in asdict(f).items() if k != "forecast_at"}


def test_standalone_cluster_gives_the_forecasts_of_local_mode(cluster: Cluster, topics: Topics, kafka: KafkaSettings,
                                                              redis_client: Any, redis_settings: RedisSettings,
                                                              namespace: str, tmp_path: Path) -> None:
    assert redis_settings.password is not None
    home = tmp_path / "home"
    registry = Registry(home / "models")
    version = tiny_model_version(registry.root, seed=3)
    registry.promote(version)
    bars = [b for t in [*TICKERS, MARKET] for b in bars_for(t, range(61))]
    store_bars(redis_client, namespace, bars)
    producer = make_producer(kafka)
    for t in TICKERS:
        e = ready_event(bars, t, 60)
        producer.produce(topics.ready, key=t.encode(), value=e.to_json())
    assert producer.flush(30) == 0
    env = os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_HOME": str(home),
                        "MINUTECAST_REDIS_PASSWORD": redis_settings.password.get_secret_value(),
                        "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}

    log = infer(env, tmp_path / "ckpt-local")
    local = {f.ticker: f for f in forecasts(kafka, topics, len(TICKERS))}
    assert set(local) == set(TICKERS), log
    assert {f.model_version for f in local.values()} == {version}

    keys = Keys(namespace)  # forget what the local run served, so the cluster run computes it all again
    redis_client.delete(*[k for t in TICKERS for k in (keys.forecast(t), keys.forecast_meta(t))])
    log = infer(env, tmp_path / "ckpt-cluster", master=cluster.url)
    both = forecasts(kafka, topics, 2 * len(TICKERS))  # topic order holds per partition only: by forecast_at
    remote = {f.ticker: f for f in both if f.forecast_at > local[f.ticker].forecast_at}
    assert set(remote) == set(TICKERS), log
    for t in TICKERS:
        assert comparable(remote[t]) == comparable(local[t]), t

    with urllib.request.urlopen(f"http://{cluster.host}:{cluster.ui_port}/json/", timeout=10) as r:  # noqa: S310
        state = json.load(r)
    apps = [a for a in state.get("completedapps", []) + state.get("activeapps", []) if a["name"] == "minutecast-infer"]
    assert apps and len(state["workers"]) == 2, state
