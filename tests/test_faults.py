"""Fault injection against real services (marker ``faults``): what the other suites do not already cover.

Every fault test follows one pattern (helpers in ``tests/support/bars.py``): a *scenario* runs a small input
(a few tickers, 150 minutes) through the fault, injected early and again inside the last ``RETAIN`` (90)
minutes the window store keeps; a *check* (``check_run``) counts every unique bar sent against the bars the
window store applied (``<ns>:stats`` ``stream_new``), and compares the window-ready events (deduplicated
by (ticker, minute, checksum)) and the windows with a no-fault reference run of the same input (the worker's
batch code, one batch per minute: it announces a window at every minute, so every event of a correct run is
one of its events and the newest per ticker is its newest); a *drop variant*, in which a test-only switch
loses exactly one bar, must fail that check.

Covered elsewhere (marked ``faults`` there too, not repeated here):

* Faust worker SIGKILL mid-replay + restart, and Redis keys lost + rebuild from Kafka (start-up and
  ``minutecast rebuild``): ``tests/test_streams_worker.py::``
  ``test_sigkill_mid_replay_then_flush_and_rebuild_give_the_clean_windows`` (drop variant:
  ``test_sigkill_and_rebuild_checks_fail_when_one_bar_is_dropped``);
* Spark job SIGKILL mid-stream + restart from its checkpoint:
  ``tests/test_infer_spark.py::test_job_persistence_hot_reload_kill_restart``;
* a corrupt model promoted (refused with ModelError, current version kept):
  ``tests/test_training_registry.py::test_corrupt_model_is_refused_and_current_kept``;
* broker SIGKILL while a replay produces: ``tests/test_producers_integration.py::``
  ``test_broker_restart_mid_replay_loses_and_duplicates_nothing``.

Here:

* a replay producer SIGKILLed early, resumed, SIGKILLed again inside the last ``RETAIN`` minutes and resumed
  to the end: no gap, at most the piece in flight at each kill sent twice, and the topic applied by the
  worker's batch code passes the check (the drop variant: the same topic with the switch on fails it);
* a private broker SIGKILLed early, a private Redis (AOF) SIGKILLed inside the last ``RETAIN`` minutes with
  the un-fsynced tail of its AOF lost (a power loss: acknowledged, committed writes gone, repaired from the
  topic by the workers) and the broker again near the end, while replays produce and Faust workers consume:
  every bar once in the topic, and the check passes; a second worker with the drop switch on, consuming a
  copy of the input through the same faults, fails it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from infra.procs import terminate
from infra.services import LocalKafka, LocalRedis
from minutecast.kafka import ensure_topics
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, parse_bar
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings
from minutecast.topics import Topics
from minutecast.window import RETAIN
from tests.support.bars import (
    Run,
    applied,
    apply_in_process,
    check_run,
    drop_env,
    frame_bars,
    interleaved,
    observe,
    pick,
    replay_dir,
)
from tests.support.kafka import committed_all, read_topic
from tests.support.services import (
    aof_mark,
    free_port,
    free_port_pair,
    kill_pidfile,
    lose_unsynced_writes,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[1]
TICKERS = ("AAPL", "MSFT", "NVDA")
MINUTES = 150
LATE = MINUTES - RETAIN + 20  # a minute index inside every ticker's last RETAIN minutes (80 of 150)


def replay_cmd(d: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path", str(d), *extra]


def topic_bars(ks: KafkaSettings, topic: str) -> list[Bar]:
    """Every bar on ``topic`` now, in per-partition order (read once the producers are done)."""
    return [parse_bar(v, k) for k, v in read_topic(ks, topic, timeout=60)]


def per_ticker(bars: list[Bar]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {}
    for b in bars:
        got.setdefault(b.ticker, []).append(b.minute)
    return got


def pace(sent: list[Bar], seconds: float) -> tuple[str, str]:
    """``--speed`` for a replay of ``sent`` lasting ``seconds`` of wall time."""
    return "--speed", f"{(sent[-1].minute - sent[0].minute) / seconds:.1f}"


@pytest.fixture(scope="module")
def replay_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Bar]]:
    """The input of both tests: 3 tickers x 150 minutes as a replay directory, and the bars it sends."""
    d = replay_dir(tmp_path_factory.mktemp("input") / "bars", interleaved(TICKERS, MINUTES))
    return d, frame_bars(d)


@pytest.fixture(scope="module")
def clean_reference(services: InfraSettings, replay_input: tuple[Path, list[Bar]]) -> Run:
    """The no-fault reference run of the input (one batch per minute)."""
    client = connect(services.redis)
    try:
        return apply_in_process(client, replay_input[1])
    finally:
        client.close()


def test_producer_sigkill_early_and_late_resumes_without_gap(
        replay_input: tuple[Path, list[Bar]], clean_reference: Run, kafka: KafkaSettings, topics: Topics,
        redis_client: Any, namespace: str) -> None:
    d, sent = replay_input
    total = len(sent)
    keys = Keys(namespace)

    def watermark(t: str) -> int:
        return int(redis_client.get(keys.producer_watermark(t)) or 0)

    first = sent[0].minute
    # Paced runs (~20 s for the whole input): killed once past minute 5, then (resumed) once every ticker's
    # watermark is inside its last RETAIN minutes.
    for what, minute in (("early", first + 60 * 5), ("inside the last RETAIN minutes", first + 60 * LATE)):
        proc = subprocess.Popen(replay_cmd(d, *pace(sent, 20.0)), cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda m=minute: min(watermark(t) for t in TICKERS) >= m, 120, f"replay {what}", [proc])
        finally:
            proc.kill()  # SIGKILL: no flush, no clean-up
            proc.wait(30)
        killed_at = {t: watermark(t) for t in TICKERS}
        assert all(killed_at[t] < sent[-1].minute - 60 * 5 for t in TICKERS), f"killed too late to matter ({what})"
        print(f"replay SIGKILLed {what}: watermarks at minute {(min(killed_at.values()) - first) // 60}")

    res = subprocess.run(replay_cmd(d), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    resent = int(res.stdout.split("sent=")[1].split()[0])
    assert 0 < resent < total - len(TICKERS) * LATE

    bars = topic_bars(kafka, topics.bars)
    got, want = per_ticker(bars), per_ticker(sent)
    for t in TICKERS:
        assert sorted(set(got[t])) == want[t], f"{t}: a minute is missing"  # no gap
        assert got[t] == sorted(got[t]), f"{t}: out of order"
    dups = len(bars) - total
    # At-least-once: only the piece in flight at each kill (one minute of bars here) can be sent twice.
    assert 0 <= dups <= 2 * len(TICKERS), dups

    # A third run (resume on) sends nothing; every watermark is the last input minute.
    res = subprocess.run(replay_cmd(d), cwd=REPO, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0 and "sent=0 delivered=0 failed=0" in res.stdout, res.stdout + res.stderr[-2000:]
    assert {t: watermark(t) for t in TICKERS} == {t: want[t][-1] for t in TICKERS}

    # The topic as it is (duplicates included), applied by the worker's batch code 50 records at a time:
    # every unique bar applied once, the no-fault run's window-ready events and windows.
    check_run(apply_in_process(redis_client, bars, batch=50), clean_reference, total)
    # Drop variant: the same topic with the switch losing one early bar (trimmed from the windows long before
    # the end: only the count and the events can tell) fails the check.
    victim = pick(sent, "MSFT", 12)
    with pytest.raises(AssertionError) as caught:
        check_run(apply_in_process(redis_client, bars, batch=50, drop=victim), clean_reference, total)
    print(f"producer SIGKILL x2: resent={resent} duplicates={dups} lost=0; losing one bar: {caught.value}")

    # --no-resume replays from scratch regardless of the watermarks.
    res = subprocess.run(replay_cmd(d, "--no-resume", "--limit", "30"), cwd=REPO, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0 and "sent=30 delivered=30 failed=0" in res.stdout, res.stdout + res.stderr[-2000:]


BrokerRedisRun = tuple[Run, list[Bar], str]  # what the worker left, the bar topic's bars, the worker's log


@pytest.fixture(scope="module")
def broker_redis_runs(tmp_path_factory: pytest.TempPathFactory, services: InfraSettings,
                      replay_input: tuple[Path, list[Bar]]) -> Iterator[dict[str, BrokerRedisRun]]:
    """A private broker and a private redis-server (own home, own ports) that this scenario kills; two
    namespaces go through the same faults at the same time: ``clean``, and ``drop`` whose worker loses one bar
    inside the last RETAIN minutes (the test-only switch)."""
    tmp = tmp_path_factory.mktemp("broker-redis")
    home = tmp / "home"
    password = LocalRedis(InfraSettings(home=home)).password()  # generated in the private home (0600)
    s = InfraSettings(home=home, kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port_pair()}"),
                      redis=RedisSettings(port=free_port(), password=SecretStr(password)),
                      kafka_heap="384m", start_timeout_s=120)
    broker, redis_server = LocalKafka(s), LocalRedis(s)
    try:
        redis_server.up()
        broker.up()
        yield broker_redis_scenario(tmp, s, broker, redis_server, *replay_input)
    finally:
        with contextlib.suppress(Exception):
            broker.down()
        with contextlib.suppress(Exception):
            redis_server.down()


def broker_redis_scenario(tmp: Path, s: InfraSettings, broker: LocalKafka, redis_server: LocalRedis, d: Path,
                          sent: list[Bar]) -> dict[str, BrokerRedisRun]:
    assert s.redis.password is not None
    variants = {"clean": {}, "drop": drop_env(pick(sent, "NVDA", -30))}
    nss = {v: f"t{uuid.uuid4().hex[:12]}" for v in variants}
    total = len(sent)
    env = os.environ | {"MINUTECAST_KAFKA_BOOTSTRAP": s.kafka.bootstrap, "MINUTECAST_REDIS_PORT": str(s.redis.port),
                        "MINUTECAST_REDIS_PASSWORD": s.redis.password.get_secret_value(),
                        "MINUTECAST_FLUSH_TIMEOUT_S": "120", "MINUTECAST_COMMIT_INTERVAL_S": "0.5",
                        "MINUTECAST_RETRY_S": "0.5"}
    client = connect(s.redis)
    for ns in nss.values():
        ensure_topics(s.kafka, Topics(ns).specs(3, 1))
    logs = {f"{n}-{v}": tmp / f"{n}-{v}.log" for n in ("replay", "worker") for v in variants}
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, v: str, cmd: list[str], extra: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(logs[f"{name}-{v}"], "wb") as log:
            p = subprocess.Popen(cmd, cwd=REPO, env=env | {"MINUTECAST_NAMESPACE": nss[v]} | extra, stdout=log,
                                 stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    def progress(v: str = "clean") -> int:
        try:
            return applied(client, nss[v])
        except Exception:  # noqa: BLE001 - Redis is down on purpose part of the time
            return 0

    def tail(name: str) -> str:
        return logs[name].read_text(errors="replace")[-3000:]

    try:
        workers = {v: start("worker", v, [sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0",
                                          "--metrics-port", "0", "--no-rebuild", "--loglevel", "info"], extra)
                   for v, extra in variants.items()}
        wait_until(lambda: all("Worker ready" in tail(f"worker-{v}") for v in variants), 180, "workers ready",
                   list(workers.values()))
        producers = {v: start("replay", v, replay_cmd(d, *pace(sent, 36.0)), {}) for v in variants}
        # 1. early: the broker crashes while all clients are connected; back after a few seconds.
        wait_until(lambda: progress() > 5 * len(TICKERS), 120, "workers consuming", list(workers.values()))
        kill_pidfile(broker.pidfile)
        assert all(p.poll() is None for p in producers.values()), "replay finished before the broker went down"
        print(f"broker SIGKILLed early: {progress()} of {total} bars applied")
        time.sleep(3)
        broker.up()
        # 2. inside the last RETAIN minutes: the machine under Redis crashes. SIGKILL, then the AOF cut back
        # to a mark taken a few batches earlier: what `appendfsync everysec` leaves after a power loss (the
        # writes of the last second, already acknowledged and committed to Kafka, are gone). The workers
        # find the state behind their next batch and repair it from the topic (streams.repair).
        wait_until(lambda: progress() > len(TICKERS) * LATE, 180, "workers inside the last RETAIN minutes",
                   list(workers.values()))
        mark, marked = aof_mark(redis_server.data), progress()
        wait_until(lambda: progress() > marked + 3 * len(TICKERS), 120, "a few batches past the AOF mark",
                   list(workers.values()))
        at = progress()
        kill_pidfile(redis_server.pidfile)
        lost = lose_unsynced_writes(mark)
        print(f"Redis SIGKILLed inside the last RETAIN minutes: {at} of {total} bars applied, the AOF cut "
              f"back by {lost} bytes to {marked}")
        assert lost > 0, "the crash lost no acknowledged write: the repair would go untested"
        time.sleep(2)
        redis_server.up()
        # 3. near the end: the broker again.
        wait_until(lambda: progress() > total - len(TICKERS) * 25, 180, "workers near the end",
                   list(workers.values()))
        at = progress()
        assert at < total - len(TICKERS) * 5, "the replay was over before the second broker crash"
        kill_pidfile(broker.pidfile)
        print(f"broker SIGKILLed near the end: {at} of {total} bars applied")
        time.sleep(3)
        broker.up()
        for v, p in producers.items():
            assert p.wait(300) == 0, tail(f"replay-{v}")
            assert f"sent={total} delivered={total} failed=0" in tail(f"replay-{v}"), tail(f"replay-{v}")
        for v, w in workers.items():
            assert w.poll() is None, tail(f"worker-{v}")
            wait_until(lambda ns=nss[v]: committed_all(s.kafka, ns, Topics(ns).bars), 240, f"{v} worker caught up",
                       [w])
    finally:
        terminate(procs)
    out = {v: (observe(client, ns, read_topic(s.kafka, Topics(ns).ready)),
               topic_bars(s.kafka, Topics(ns).bars), logs[f"worker-{v}"].read_text(errors="replace"))
           for v, ns in nss.items()}
    client.close()
    return out


def test_broker_and_redis_killed_while_producing_and_consuming(
        broker_redis_runs: dict[str, BrokerRedisRun], replay_input: tuple[Path, list[Bar]],
        clean_reference: Run) -> None:
    _, sent = replay_input
    run, bars, log = broker_redis_runs["clean"]
    assert len(bars) == len(sent), "a bar was lost or duplicated in the topic"
    assert per_ticker(bars) == per_ticker(sent)  # every bar once, in order
    assert "window state behind the bar topic" in log, "the worker did not find what Redis lost"
    check_run(run, clean_reference, len(sent))


def test_broker_and_redis_kill_check_fails_when_one_bar_is_dropped(
        broker_redis_runs: dict[str, BrokerRedisRun], replay_input: tuple[Path, list[Bar]],
        clean_reference: Run) -> None:
    _, sent = replay_input
    run, bars, log = broker_redis_runs["drop"]
    assert per_ticker(bars) == per_ticker(sent)  # the topic is whole: the worker lost the bar
    assert "TEST SWITCH" in log
    with pytest.raises(AssertionError) as caught:
        check_run(run, clean_reference, len(sent))
    print(f"worker losing one bar through the broker and Redis crashes: {caught.value}")
