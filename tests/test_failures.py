"""Failures of the Faust worker's writes (``streams/failures.py``), split as retry / poison / fatal: the
classification, a record the store's script fails on isolated and dead-lettered (``store_error``), and a
real worker against a private Redis that goes down (stalled, retried, caught up) and then refuses writes
past ``maxmemory`` (stopped with exit status 3, nothing of the batch committed, applied after a restart)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from infra.procs import terminate
from minutecast.kafka import end_offsets, make_producer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar
from minutecast.settings import KafkaSettings, RedisSettings
from minutecast.topics import Topics
from streams.batch import BatchProcessor, Message
from streams.failures import kind as failure_kind
from streams.window_store import read_window
from tests.support.inference import bars_for
from tests.support.kafka import committed, committed_all
from tests.support.metrics import scrape
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]



def test_failures_are_classified_retry_poison_or_fatal() -> None:
    """Pure logic: which failures the worker retries, isolates, or stops on (streams.failures.kind)."""
    retry = [redis.ConnectionError("refused"), redis.TimeoutError(), redis.BusyLoadingError("LOADING"),
             redis.exceptions.ReadOnlyError("You can't write against a read only replica."), KafkaConnectionError(),
             TimeoutError(), ConnectionResetError()]
    # As redis-py raises them: the reply's error code stripped and named by the class.
    fatal = [redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
             redis.ResponseError("command not allowed when used memory > 'maxmemory'. script: a16e, on "
                                 "@user_script:93."),
             redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable"),
             redis.AuthenticationError("WRONGPASS"), redis.exceptions.NoPermissionError("no permissions"),
             redis.ResponseError("unknown command 'FOO'"), MessageSizeTooLargeError(), ValueError("a bug")]
    poison = [redis.ResponseError("user_script:12: Script attempted to access nonexistent global variable"),
              redis.ResponseError("Error running script (call to f_1a2b): @user_script:9: bad argument")]
    assert [failure_kind(e) for e in retry] == ["retry"] * len(retry)
    assert [failure_kind(e) for e in fatal] == ["fatal"] * len(fatal)
    assert [failure_kind(e) for e in poison] == ["poison"] * len(poison)


class _ScriptFailsOn:
    """A window store whose script fails on any batch holding ``ticker`` (pure logic of the isolation)."""

    def __init__(self, ticker: str, error: str) -> None:
        self.ticker, self.error = ticker, error
        self.applied: list[Bar] = []
        self.roundtrips = 0

    def apply(self, bars: list[Bar], messages: int = 0) -> tuple[dict[str, Any], list[int], list[int]]:
        self.roundtrips += 1
        if any(b.ticker == self.ticker for b in bars):
            raise redis.ResponseError(self.error)
        self.applied += bars
        return {}, [], []


def test_a_record_the_store_script_fails_on_is_isolated_and_dead_lettered() -> None:
    good = bars_for("AAA", range(0, 8))
    msgs = [Message(b.ticker.encode(), b.to_json(), "bars", 0, i) for i, b in enumerate(good)]
    poison = bars_for("BAD", range(3, 4))[0]
    msgs.insert(5, Message(b"BAD", poison.to_json(), "bars", 0, 99))
    store = _ScriptFailsOn("BAD", "user_script:1: attempt to compare nil with number")
    out = BatchProcessor(store).process_isolating(msgs)  # type: ignore[arg-type]
    assert [(d.reason, d.offset) for d in out.deadletters] == [("store_error", 99)]
    assert store.applied == good and out.bars == len(good)  # every other record applied, in order
    # A Redis-wide refusal is not one record's fault: it propagates (the worker stops on it).
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        BatchProcessor(_ScriptFailsOn("BAD", "command not allowed when used memory > 'maxmemory'. script: a1, on "
                                             "@user_script:93.")).process_isolating(msgs)  # type: ignore[arg-type]


def test_worker_stalls_while_redis_is_down_then_stops_on_oom_without_committing(
        topics: Topics, kafka: KafkaSettings, namespace: str, tmp_path: Path,
        private_redis: tuple[Any, RedisSettings]) -> None:
    server, rs = private_redis
    assert rs.password is not None
    client = connect(rs)
    keys = Keys(namespace)
    env = os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_REDIS_PORT": str(rs.port),
                        "MINUTECAST_REDIS_PASSWORD": rs.password.get_secret_value(), "MINUTECAST_RETRY_S": "0.2",
                        "MINUTECAST_RETRY_MAX_S": "1", "MINUTECAST_COMMIT_INTERVAL_S": "0.5"}
    bars = bars_for("AAA", range(0, 40))
    producer = make_producer(kafka, **{"linger.ms": 5})

    def send(part: list[Bar]) -> None:
        for b in part:
            producer.produce(topics.bars, b.to_json(), b.ticker.encode())
        assert producer.flush(30) == 0

    def taken() -> int:
        try:
            return int(client.hget(keys.stats(), "stream_messages") or 0)
        except Exception:  # noqa: BLE001 - Redis is down on purpose part of the time
            return -1

    def start(name: str, port: int) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        return subprocess.Popen([sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0",
                                 "--metrics-port", str(port), "--no-rebuild"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    port = free_port()
    worker = start("worker", port)
    try:
        send(bars[:20])
        wait_until(lambda: taken() >= 20, 180, "first bars applied", [worker])
        # 1. Redis goes away: the worker backs off and shows as stalled; nothing is skipped.
        server.down()
        send(bars[20:30])
        wait_until(lambda: scrape(port).get("minutecast_stream_stalled") == 1.0, 60, "stalled gauge", [worker])
        m = scrape(port)
        assert sum(v for k, v in m.items() if k.startswith("minutecast_stream_retries_total")) >= 1
        assert m["minutecast_stream_stalled_seconds"] >= 0
        server.up()
        wait_until(lambda: taken() >= 30 and scrape(port).get("minutecast_stream_stalled") == 0.0, 120,
                   "caught up after the stall", [worker])
        assert client.hget(keys.stats(), "stream_stalled_since") == b"0"
        assert read_window(client, keys, "AAA")[-1].minute == bars[29].minute
        wait_until(lambda: committed_all(kafka, namespace, topics.bars), 60, "commit", [worker])
        before = end_offsets(kafka, topics.bars)
        # 2. Redis refuses every write (maxmemory reached, noeviction): no retry can help. The worker says
        #    so, exits 3, and commits nothing of that batch.
        client.config_set("maxmemory", "1")
        send(bars[30:35])
        assert worker.wait(120) == 3
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)
    log_text = (tmp_path / "worker.log").read_text(errors="replace")
    assert "FATAL in redis write" in log_text and "maxmemory" in log_text, log_text[-3000:]
    assert "store_error" not in log_text and "dead-lettered" not in log_text  # not mistaken for a poison record
    used = {p: end for p, end in before.items() if end > 0}  # AAA's partition (the others hold nothing)
    after = end_offsets(kafka, topics.bars)
    assert committed(kafka, f"minutecast-windows-{namespace}", topics.bars, used) == used
    assert sum(after.values()) == sum(before.values()) + 5  # the 5 bars are in the topic, not committed
    # 3. Once memory is back, a restarted worker applies the batch it had not committed.
    client.config_set("maxmemory", "0")
    worker = start("worker2", free_port())
    try:
        wait_until(lambda: taken() >= 35, 180, "the uncommitted batch applied after the restart", [worker])
        assert read_window(client, keys, "AAA")[-1].minute == bars[34].minute
    finally:
        terminate([worker], 60, group=True)
