"""Fault injection against real services (marker ``faults``): what the other suites do not already cover.

Covered elsewhere (marked ``faults`` there too, not repeated here):

* Faust worker SIGKILL mid-replay + restart, and Redis keys lost + rebuild from Kafka (start-up and
  ``minutecast rebuild``): ``tests/test_streams_worker.py::``
  ``test_sigkill_mid_replay_then_flush_and_rebuild_give_the_clean_windows``;
* Spark job SIGKILL mid-stream + restart from its checkpoint:
  ``tests/test_infer_spark.py::test_job_persistence_hot_reload_kill_restart``;
* a corrupt model promoted (refused with ModelError, current version kept):
  ``tests/test_training_registry.py::test_corrupt_model_is_refused_and_current_kept``;
* broker SIGKILL while a replay produces: ``tests/test_producers_integration.py::``
  ``test_broker_restart_mid_replay_loses_and_duplicates_nothing``.

Here:

* a replay producer SIGKILLed mid-replay and restarted resumes from its Redis watermark: no gap, at most
  the piece in flight sent twice (and the windows equal a clean application of the input);
* a private broker SIGKILLed and restarted, then a private Redis (AOF) SIGKILLed and restarted, while a
  replay produces and a Faust worker consumes: every bar once in the topic, windows equal the reference.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from infra.procs import terminate
from minutecast.kafka import ensure_topics
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, parse_bar
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings
from minutecast.topics import Topics
from streams.window_store import WindowStore
from tests.test_producers_integration import (
    _free_port_pair,
    consume_all,
    small_replay_dir,
    topic_has_messages,
)
from tests.test_streams_worker import free_port, snapshot, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[1]


def replay_cmd(d: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path", str(d), *extra]


def input_minutes(d: Path) -> dict[str, list[int]]:
    from producers import replay

    frame = replay.load(d)
    return {str(t): sorted(g["minute"].astype(int).tolist()) for t, g in frame.groupby("ticker")}


def topic_bars(ks: KafkaSettings, topic: str, expect: int) -> list[Bar]:
    return [parse_bar(v, k) for k, v, _ in consume_all(ks, topic, expect, timeout_s=120, settle_s=3)]


def reference_windows(client: Any, scratch_ns: str, bars: list[Bar]) -> dict[str, Any]:
    """The windows a clean application of the topic's bars (in topic order) gives, in a scratch namespace."""
    try:
        WindowStore(client, Keys(scratch_ns), 3600).apply(bars)
        return snapshot(client, scratch_ns)
    finally:
        keys = list(client.scan_iter(match=Keys(scratch_ns).namespace_pattern()))
        if keys:
            client.delete(*keys)


def kill_pidfile(pidfile: Path) -> None:
    """SIGKILL a service started by infra.services (our child) and wait until its pidfile is stale."""
    from infra.procs import read_pid

    pid = read_pid(pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 30
    while read_pid(pidfile) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def test_producer_sigkill_mid_replay_resumes_without_gap(shared_data: Path, tmp_path: Path, kafka: KafkaSettings,
                                                         topics: Topics, redis_client: Any, namespace: str) -> None:
    from producers import replay

    tickers = ("AAPL", "MSFT", "NVDA")
    d = small_replay_dir(shared_data, tmp_path, tickers, 240, bad=False)
    want = input_minutes(d)
    total = sum(len(v) for v in want.values())
    span_s = float(np.ptp(replay.load(d)["minute"].to_numpy()))
    keys = Keys(namespace)
    # ~20 s of wall time paced minute by minute; killed once some watermarks moved.
    proc = subprocess.Popen(replay_cmd(d, "--speed", f"{span_s / 20.0:.1f}"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: redis_client.get(keys.producer_watermark("AAPL")) is not None, 120, "first watermark")
    time.sleep(1.0)
    assert proc.poll() is None, "replay finished before it was killed"
    proc.kill()  # SIGKILL: no flush, no clean-up
    proc.wait(30)
    killed_at = {t: int(redis_client.get(keys.producer_watermark(t)) or 0) for t in tickers}
    assert any(killed_at[t] < want[t][-1] for t in tickers), "killed too late to matter"

    res = subprocess.run(replay_cmd(d), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    resent = int(res.stdout.split("sent=")[1].split()[0])
    assert 0 < resent < total

    bars = topic_bars(kafka, topics.bars, total)
    got: dict[str, list[int]] = {}
    for b in bars:
        got.setdefault(b.ticker, []).append(b.minute)
    for t in tickers:
        assert sorted(set(got[t])) == want[t], f"{t}: a minute is missing"  # no gap
        assert got[t] == sorted(got[t]), f"{t}: out of order"
    dups = len(bars) - total
    # At-least-once: only the piece in flight at the kill (one minute of bars here) can be sent twice.
    assert 0 <= dups <= len(tickers), dups

    # A third run (resume on) sends nothing; every watermark is the last input minute.
    res = subprocess.run(replay_cmd(d), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "sent=0 delivered=0 failed=0" in res.stdout, res.stdout + res.stderr[-2000:]
    assert {t: int(redis_client.get(keys.producer_watermark(t))) for t in tickers} == {t: want[t][-1] for t in tickers}

    # The duplicates are harmless downstream: applying the topic as it is equals applying the input once.
    once = {(b.ticker, b.minute): b for b in reversed(bars)}  # first copy of each minute
    ref = reference_windows(redis_client, f"{namespace}once", sorted(once.values(), key=lambda b: (b.ticker, b.minute)))
    assert reference_windows(redis_client, f"{namespace}topic", bars) == ref
    print(f"producer SIGKILL mid-replay: resent={resent} duplicates={dups} lost=0")

    # --no-resume replays from scratch regardless of the watermarks.
    res = subprocess.run(replay_cmd(d, "--no-resume", "--limit", "30"), cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0 and "sent=30 delivered=30 failed=0" in res.stdout, res.stdout + res.stderr[-2000:]


@pytest.fixture
def private_services(tmp_path: Path, services: InfraSettings) -> Iterator[tuple[Any, Any, InfraSettings]]:
    """A private broker and a private redis-server (own home, own ports) that this test may kill."""
    from infra.services import LocalKafka, LocalRedis

    port = _free_port_pair()
    password = "faults-" + os.urandom(6).hex()
    s = InfraSettings(home=tmp_path / "home", kafka=KafkaSettings(bootstrap=f"127.0.0.1:{port}"),
                      redis=RedisSettings(port=free_port(), password=SecretStr(password)),
                      kafka_heap="384m", start_timeout_s=120)
    old = os.environ.get("MINUTECAST_REDIS_PASSWORD")
    os.environ["MINUTECAST_REDIS_PASSWORD"] = password  # LocalRedis writes requirepass from it
    broker, redis_server = LocalKafka(s), LocalRedis(s)
    try:
        redis_server.up()
        broker.up()
        yield broker, redis_server, s
    finally:
        with contextlib.suppress(Exception):
            broker.down()
        with contextlib.suppress(Exception):
            redis_server.down()
        if old is None:
            os.environ.pop("MINUTECAST_REDIS_PASSWORD", None)
        else:
            os.environ["MINUTECAST_REDIS_PASSWORD"] = old


def test_broker_and_redis_killed_while_producing_and_consuming(
        shared_data: Path, tmp_path: Path, namespace: str, private_services: tuple[Any, Any, InfraSettings]) -> None:
    from producers import replay

    broker, redis_server, s = private_services
    assert s.redis.password is not None
    env = os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_KAFKA_BOOTSTRAP": s.kafka.bootstrap,
                        "MINUTECAST_REDIS_PORT": str(s.redis.port),
                        "MINUTECAST_REDIS_PASSWORD": s.redis.password.get_secret_value(),
                        "MINUTECAST_FLUSH_TIMEOUT_S": "120", "MINUTECAST_COMMIT_INTERVAL_S": "0.5",
                        "MINUTECAST_RETRY_S": "0.5"}
    client = connect(s.redis)
    keys = Keys(namespace)
    topic = Topics(namespace).bars
    tickers = ("AAPL", "MSFT")
    d = small_replay_dir(shared_data, tmp_path, tickers, 240, bad=False)
    want = input_minutes(d)
    total = sum(len(v) for v in want.values())
    span_s = float(np.ptp(replay.load(d)["minute"].to_numpy()))

    ensure_topics(s.kafka, Topics(namespace).specs(3, 1))
    logs = {n: open(tmp_path / f"{n}.log", "wb") for n in ("replay", "worker")}  # noqa: SIM115
    producer = subprocess.Popen(replay_cmd(d, "--speed", f"{span_s / 30.0:.1f}"), cwd=REPO, env=env,
                                stdout=logs["replay"], stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0",
                               "--metrics-port", "0", "--no-rebuild"], cwd=REPO, env=env,
                              stdout=logs["worker"], stderr=subprocess.STDOUT)

    def applied() -> int:
        try:
            return int(client.hget(keys.stats(), "stream_messages") or 0)
        except Exception:  # noqa: BLE001 - Redis is down on purpose part of the time
            return 0

    def tail(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]

    try:
        wait_until(lambda: applied() > 20, 180, "worker consuming", [worker])
        # 1. the broker crashes while both clients are connected; back after a few seconds.
        kill_pidfile(broker.pidfile)
        assert producer.poll() is None, "replay finished before the broker went down"
        time.sleep(3)
        broker.up()
        wait_until(lambda: applied() > 0 and topic_has_messages(s.kafka, topic), 120, "broker back")
        # 2. Redis crashes (SIGKILL: the AOF has every acknowledged write; fsync is everysec) and comes back.
        kill_pidfile(redis_server.pidfile)
        time.sleep(2)
        redis_server.up()
        assert worker.poll() is None, tail("worker")
        rc = producer.wait(300)
        assert rc == 0, tail("replay")
        out = (tmp_path / "replay.log").read_text()
        assert f"sent={total} delivered={total} failed=0" in out, out[-2000:]
        wait_until(lambda: applied() >= total, 240, "worker caught up", [worker])
        time.sleep(2)  # a few more seconds for anything re-delivered after the crash
    finally:
        terminate([producer, worker])
        for fh in logs.values():
            fh.close()

    bars = topic_bars(s.kafka, topic, total)
    assert len(bars) == total, "a bar was lost or duplicated in the topic"
    got: dict[str, list[int]] = {}
    for b in bars:
        got.setdefault(b.ticker, []).append(b.minute)
    assert got == want
    assert snapshot(client, namespace) == reference_windows(client, f"{namespace}ref", bars), tail("worker")

