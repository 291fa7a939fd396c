"""The Faust worker end to end, with the real Kafka and Redis, workers as subprocesses.

* bad messages -> dead letters with their reason while the good bars around them land; duplicates,
  out-of-order and late bars; window-ready events after the write, for ready windows only; metrics;
* a worker SIGKILLed mid-replay, early and again inside the last ``RETAIN`` minutes, and restarted, and
  then the namespace's keys deleted and rebuilt (at start-up, and ``minutecast rebuild``): every unique bar
  applied once, every window-ready event one of a no-fault run's, the windows of a no-fault run
  (``tests/support/bars.py`` ``check_run``); the same scenario with the worker's test-only switch losing one
  bar (and a rebuild losing it) fails that check;
* two workers in one group (one joining mid-stream: a rebalance) give the result of one.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from mode import Service
from mode.utils.locks import Event

import streams.rebuild
from infra.procs import terminate
from minutecast.errors import ConfigError
from minutecast.kafka import make_producer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, WindowReady
from minutecast.settings import InfraSettings, KafkaSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.window import GAP, MINUTE, RETAIN, checksum
from streams.batch import DROP_SWITCH, DROP_SWITCH_GUARD, drop_switch
from streams.faust_patches import PINNED, Resume, lean_drain, pinned_object, unpinned
from streams.rebuild import rebuild
from streams.window_store import HEADER, WindowStore, read_window
from streams.windows import window_for
from tests.support.bars import (
    OPEN,
    Run,
    applied,
    apply_in_process,
    check_run,
    drop_env,
    make_bars,
    observe,
    pick,
    unique,
)
from tests.support.kafka import committed_all, read_topic
from tests.support.metrics import metric
from tests.support.services import free_port, wait_until
from tests.support.windows import reference, snapshot

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
# Keys land by CRC32 (librdkafka's default partitioner): these five cover all 3 test partitions.
TICKERS = ("AAPL", "MSFT", "NVDA", "TSLA", "INTC")


@pytest.fixture
def workers(namespace: str, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``minutecast stream`` subprocesses for this namespace; all are stopped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(procs)}.log", "wb")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "minutecast.cli", "stream", "--web-port", "0", "--loglevel", "info", *extra],
            cwd=REPO, env=os.environ | {"MINUTECAST_NAMESPACE": namespace, "MINUTECAST_COMMIT_INTERVAL_S": "0.5"}
            | (env or {}), stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    terminate(procs)
    for f in sorted(tmp_path.glob("worker*.log")):
        text = f.read_text(errors="replace")
        if "Traceback" in text:
            print(f"--- {f.name} (last 3000 chars)\n{text[-3000:]}")


def produce(kafka: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    p = make_producer(kafka, **{"linger.ms": 5})
    for key, value in records:
        p.produce(topic, value, key)
    assert p.flush(60) == 0


def bar_records(bars: list[Bar]) -> list[tuple[bytes | None, bytes | None]]:
    return [(b.ticker.encode(), b.to_json()) for b in bars]


def delete_namespace_keys(client: Any, namespace: str) -> None:
    keys = list(client.scan_iter(match=Keys(namespace).namespace_pattern(), count=1000))
    assert keys
    client.delete(*keys)


def dataset(n_minutes: int = 150) -> list[Bar]:
    """Tickers interleaved minute by minute as a live feed would be; TSLA has a 10-minute gap near the end
    (longer than MAX_FILL: collapsed and marked, its windows reach over it)."""
    per = {t: make_bars(t, OPEN, n_minutes, skip=set(range(n_minutes - 30, n_minutes - 20)) if t == "TSLA"
                        else set()) for t in TICKERS}
    by_minute: dict[int, list[Bar]] = {}
    for bars in per.values():
        for b in bars:
            by_minute.setdefault(b.minute, []).append(b)
    return [b for m in sorted(by_minute) for b in by_minute[m]]


def test_worker_windows_deadletters_ready_events_and_metrics(topics: Topics, kafka: KafkaSettings,
                                                             redis_client: Any, namespace: str,
                                                             workers: Callable[..., Any]) -> None:
    bars = dataset(150)
    recs = bar_records(bars)
    # out of order inside the window: swap neighbours here and there
    for i in range(10, len(recs) - 10, 37):
        recs[i], recs[i + 5] = recs[i + 5], recs[i]
    bad = [
        (b"AAPL", b"{oops"),  # not_json
        (b"MSFT", bars[0].to_json()),  # key_mismatch (bars[0] is AAPL)
        (b"AAPL", bars[4].to_json().replace(b'"v":1', b'"v":9')),  # schema_version
        (b"NVDA", b'{"v":1,"ticker":"NVDA"}'),  # missing_field
    ]
    recs = recs[:50] + bad[:2] + recs[50:300] + bad[2:] + recs[300:]
    recs += recs[100:140]  # duplicates (a producer retrying a chunk)
    late = make_bars("AAPL", OPEN, 1)[0]  # minute 0 again, after minute 149: late
    conflicting = Bar("MSFT", bars[-1].minute, 500.0, 501.0, 499.0, 500.5, 1.0, "test", None)
    recs += [(b"AAPL", late.to_json()), (b"MSFT", conflicting.to_json())]
    produce(kafka, topics.bars, recs)

    metrics_port = free_port()
    w = workers("--metrics-port", str(metrics_port), "--no-rebuild")
    keys = Keys(namespace)
    wait_until(lambda: int(redis_client.hget(keys.stats(), "stream_messages") or 0) >= len(recs), 120,
               "all messages applied", [w])

    assert snapshot(redis_client, namespace) == reference(redis_client, namespace, bars)
    stats = {k.decode(): int(v) for k, v in redis_client.hgetall(keys.stats()).items()}
    # the re-sent chunk (minutes ~20-28, older than each ticker's newest RETAIN bars) + one late bar
    assert stats["stream_late"] == 41 and stats["stream_conflict"] == 1
    assert all(len(read_window(redis_client, keys, t)) == RETAIN for t in snapshot(redis_client, namespace))
    assert OPEN not in [r.minute for r in read_window(redis_client, keys, "AAPL")]

    # dead letters: every bad message with its reason, and the conflicting duplicate
    wait_until(lambda: len(read_topic(kafka, topics.deadletter)) >= 5, 60, "dead letters")
    dead = [json.loads(v) for _, v in read_topic(kafka, topics.deadletter)]
    assert sorted(d["reason"] for d in dead) == sorted(
        ["not_json", "key_mismatch", "schema_version", "missing_field", "conflicting_duplicate"])
    assert all(d["stage"] == "stream" and d["source_topic"] == topics.bars for d in dead)

    # window-ready: the last window of each ready ticker, with the checksum of what Redis holds
    def final_ready() -> dict[str, WindowReady]:
        out: dict[str, WindowReady] = {}
        for k, v in read_topic(kafka, topics.ready):
            ev = WindowReady.from_json(v)
            assert k == ev.ticker.encode()
            out[ev.ticker] = ev if ev.ticker not in out or ev.minute >= out[ev.ticker].minute else out[ev.ticker]
        return out

    last = bars[-1].minute
    wait_until(lambda: {t for t, e in final_ready().items() if e.minute == last} >= set(TICKERS),
               60, "ready events at the last minute")
    ready = final_ready()
    for t in TICKERS:
        rows = read_window(redis_client, keys, t)
        win = window_for(rows, last)
        assert win is not None
        assert ready[t].checksum == checksum(win)
        assert ready[t].published_at == rows[-1].published_at and ready[t].ready_at > 0
    # TSLA's 10-minute gap is inside its last window: collapsed, the bar after it marked, still announced
    tsla = window_for(read_window(redis_client, keys, "TSLA"), last)
    assert tsla is not None and tsla[tsla[:, MINUTE] == OPEN + 60 * 130, GAP].tolist() == [1.0]
    _, _, ann_t, ann_sum, _ = HEADER.unpack_from(redis_client.get(keys.window("AAPL")))  # the announced record
    assert int(ann_t) == last and ann_sum.decode() == ready["AAPL"].checksum

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()  # noqa: S310
    assert f"minutecast_stream_bars_in_total {float(len(recs))}" in body
    assert 'minutecast_stream_deadletters_total{reason="not_json"} 1.0' in body
    assert "minutecast_stream_late_dropped_total" in body and "minutecast_stream_consumer_lag" in body


@pytest.fixture(scope="module")
def clean_reference(services: InfraSettings) -> Run:
    """The no-fault run of :func:`dataset` (150 minutes): the worker's batch code, one batch per minute."""
    client = connect(services.redis)
    try:
        return apply_in_process(client, dataset(150))
    finally:
        client.close()


def sigkill_scenario(kafka: KafkaSettings, topics: Topics, client: Any, namespace: str,
                     workers: Callable[..., Any], env: dict[str, str] | None = None) -> tuple[Run, list[Bar]]:
    """:func:`dataset` (150 minutes) on the bar topic; a worker SIGKILLed early (minute ~8), a restarted one
    SIGKILLed inside the last RETAIN minutes (minute ~80 of 150), a third one finishing. ``env``: extra worker
    environment (the drop switch). Returns what the workers left and the bars sent."""
    bars = dataset(150)
    produce(kafka, topics.bars, bar_records(bars))
    total = unique(bars)
    # Small batches so the replay takes a while; kill -9 once part of it is applied.
    slow = {"MINUTECAST_TAKE_MAX": "4", "MINUTECAST_TAKE_WITHIN_S": "0.01"} | (env or {})
    late = total - len(TICKERS) * (RETAIN - 20)  # bars applied at minute ~80: inside every ticker's last RETAIN
    for start, what in ((40, "early"), (late, "inside the last RETAIN minutes")):
        w = workers("--no-rebuild", env=slow)
        wait_until(lambda s=start: applied(client, namespace) > s, 120, f"replay {what}", [w], poll=0.01)
        os.kill(w.pid, signal.SIGKILL)
        w.wait(10)
        done = applied(client, namespace)
        assert done < total - 2 * len(TICKERS), f"killed too late to matter ({what})"
        print(f"worker SIGKILLed {what}: {done} of {total} bars applied")
    w = workers("--no-rebuild", env=slow)
    wait_until(lambda: committed_all(kafka, namespace, topics.bars), 180, "restarted worker caught up", [w])
    w.send_signal(signal.SIGTERM)
    w.wait(30)
    return observe(client, namespace, read_topic(kafka, topics.ready)), bars


@pytest.mark.faults
def test_sigkill_mid_replay_then_flush_and_rebuild_give_the_clean_windows(
        topics: Topics, kafka: KafkaSettings, redis_client: Any, namespace: str,
        workers: Callable[..., Any], clean_reference: Run, caplog: pytest.LogCaptureFixture) -> None:
    run, bars = sigkill_scenario(kafka, topics, redis_client, namespace, workers)
    sent = unique(bars)
    check_run(run, clean_reference, sent)
    expected = reference(redis_client, namespace, bars)  # the windows including published_at, byte for byte
    assert snapshot(redis_client, namespace) == expected

    # Redis lost the namespace: the next worker rebuilds at start-up (before consuming anything new).
    delete_namespace_keys(redis_client, namespace)
    w = workers()
    wait_until(lambda: snapshot(redis_client, namespace) == expected, 120, "start-up rebuild", [w])
    w.send_signal(signal.SIGTERM)
    w.wait(30)
    check_run(observe(redis_client, namespace, [], "rebuild_"), clean_reference, sent, events=False)

    # ... and by hand.
    delete_namespace_keys(redis_client, namespace)
    out = subprocess.run([sys.executable, "-m", "minutecast.cli", "rebuild"], cwd=REPO,
                         capture_output=True, text=True, timeout=180, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["bars"] == len(bars) and report["tickers"] == len(TICKERS)
    assert snapshot(redis_client, namespace) == expected
    check_run(observe(redis_client, namespace, [], "rebuild_"), clean_reference, sent, events=False)

    # ... and after an upgrade: yesterday's store (v3 values; one ticker still in the v2 text hashes; an applied
    # record that must not vouch for the new layout) is dropped and rebuilt in v4 from the topic, said in one line.
    delete_namespace_keys(redis_client, namespace)
    keys = Keys(namespace)
    for t in TICKERS[1:]:
        redis_client.set(f"{namespace}:w3:{t}", b"MCW3" + bytes(28))
    redis_client.hset(f"{namespace}:win:{TICKERS[0]}", mapping={str(OPEN): "1.0 1.0 1.0 1.0 1.0 None"})
    redis_client.hset(f"{namespace}:winmeta:{TICKERS[0]}", mapping={"max": OPEN})
    redis_client.hset(keys.stream_applied(), mapping={"0": 10**9})
    with caplog.at_level(logging.WARNING, logger="streams.rebuild"):
        rebuild(StreamSettings())
    said = [r.getMessage() for r in caplog.records if "older layout" in r.getMessage()]
    assert said == [f"window store: {len(TICKERS)} tickers in an older layout (v3 ns:w3:*, v2 ns:win:*) dropped; "
                    "rebuilding them from the bar topic in the v4 layout"]
    assert snapshot(redis_client, namespace) == expected
    assert not list(redis_client.scan_iter(match=f"{namespace}:w3:*"))
    assert not list(redis_client.scan_iter(match=f"{namespace}:win:*"))
    assert not list(redis_client.scan_iter(match=f"{namespace}:winmeta:*"))
    assert max(WindowStore(redis_client, keys, 3600).applied().values()) < 10**9


@pytest.mark.faults
def test_sigkill_and_rebuild_checks_fail_when_one_bar_is_dropped(
        topics: Topics, kafka: KafkaSettings, redis_client: Any, namespace: str,
        workers: Callable[..., Any], clean_reference: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same scenario with the worker's test-only switch losing one early bar (trimmed from Redis long
    before the end, so only the applied count and the window-ready events can tell): the check fails.
    So does the rebuild's, when the rebuild loses that bar."""
    victim = pick(dataset(150), "AAPL", 10)
    run, bars = sigkill_scenario(kafka, topics, redis_client, namespace, workers, drop_env(victim))
    assert run.windows == clean_reference.windows  # the lost bar is out of the retained minutes ...
    with pytest.raises(AssertionError) as caught:  # ... yet the check sees it
        check_run(run, clean_reference, unique(bars))
    print(f"worker losing {victim.ticker} {victim.minute}: {caught.value}")

    delete_namespace_keys(redis_client, namespace)
    monkeypatch.setattr(streams.rebuild, "WindowStore", losing(victim))
    report = rebuild(StreamSettings())  # in process, with the store losing the victim
    assert report.bars == len(bars)
    with pytest.raises(AssertionError) as caught:
        check_run(observe(redis_client, namespace, [], "rebuild_"), clean_reference, unique(bars), events=False)
    print(f"rebuild losing {victim.ticker} {victim.minute}: {caught.value}")


def losing(victim: Bar) -> type[WindowStore]:
    """A WindowStore that loses ``victim`` (the rebuild's counterpart of the worker's drop switch)."""

    class Losing(WindowStore):
        def apply(self, bars: Sequence[Bar], messages: int = 0) -> Any:
            return super().apply([b for b in bars if (b.ticker, b.minute) != (victim.ticker, victim.minute)],
                                 messages)

    return Losing


def test_drop_switch_is_test_only_and_refused_without_its_guard(caplog: pytest.LogCaptureFixture) -> None:
    assert drop_switch({}) is None
    with caplog.at_level(logging.ERROR, logger="streams.faust_app"):
        assert drop_switch({DROP_SWITCH: "AAPL:1759325400"}) is None
    assert "refused" in caplog.text
    assert drop_switch({DROP_SWITCH: "AAPL:1759325400", DROP_SWITCH_GUARD: "1"}) == ("AAPL", 1759325400)
    assert drop_switch({DROP_SWITCH: "BRK-B:60", DROP_SWITCH_GUARD: "1"}) == ("BRK-B", 60)
    with pytest.raises(ConfigError):
        drop_switch({DROP_SWITCH: "AAPL", DROP_SWITCH_GUARD: "1"})


def test_two_workers_give_the_result_of_one(topics: Topics, kafka: KafkaSettings, redis_client: Any,
                                            namespace: str, workers: Callable[..., Any], tmp_path: Path) -> None:
    bars = dataset(180)
    half = len(bars) // 2
    ports = [free_port(), free_port()]
    w1 = workers("--metrics-port", str(ports[0]))
    produce(kafka, topics.bars, bar_records(bars[:half]))
    keys = Keys(namespace)
    wait_until(lambda: int(redis_client.hget(keys.stats(), "stream_messages") or 0) > 0, 120, "first worker", [w1])
    w2 = workers("--metrics-port", str(ports[1]))  # joins the group: a rebalance while bars keep coming
    chunks = [bars[i:i + 10] for i in range(half, len(bars), 10)]
    log2 = tmp_path / "worker1.log"
    deadline = time.monotonic() + 120
    while chunks and not ("Worker ready" in log2.read_text(errors="replace") or time.monotonic() > deadline):
        produce(kafka, topics.bars, bar_records(chunks.pop(0)))
        time.sleep(0.5)
    assert len(chunks) > 3, "the second worker took too long to join"
    for chunk in chunks:  # the rest after it joined
        produce(kafka, topics.bars, bar_records(chunk))
        time.sleep(0.05)
    wait_until(lambda: committed_all(kafka, namespace, topics.bars), 180, "both workers caught up", [w1, w2])
    assert snapshot(redis_client, namespace) == reference(redis_client, namespace, bars)
    tickers_all = {b.ticker for b in bars}
    assert {t for t in tickers_all if read_window(redis_client, keys, t)} == tickers_all
    # count-based retention: every ticker keeps its newest RETAIN bars, TSLA's gap notwithstanding
    assert all(len(read_window(redis_client, keys, t)) == RETAIN for t in snapshot(redis_client, namespace))
    # both workers took part (every partition holds data, so each member's share has some)
    per_worker = [metric(port, "minutecast_stream_bars_in_total") for port in ports]
    assert sum(per_worker) >= len(bars) and all(n > 0 for n in per_worker), per_worker


def test_resume_finishes_a_started_coroutine_like_a_task() -> None:
    async def main() -> None:
        seen: list[str] = []

        async def deliver(fut: asyncio.Future[int]) -> int:
            try:
                return await fut + 1
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        for cancel in (False, True):
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            coro = deliver(fut)
            task = asyncio.ensure_future(Resume(coro, coro.send(None)))
            await asyncio.sleep(0)
            if cancel:  # what wait_first does to a blocked record when the flow is suspended
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            else:
                fut.set_result(1)
                assert await task == 2
        assert seen == ["cancelled"]

    asyncio.run(main())


def test_lean_drain_hands_records_over_inline_and_a_suspended_flow_still_abandons_a_blocked_one() -> None:
    from faust.transport.consumer import Consumer

    src = inspect.getsource(Consumer._drain_messages).encode()  # lean_drain copies it: re-check on an upgrade
    assert hashlib.sha256(src).hexdigest() == "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
    # the module's own pin check (what create_app logs) names the same source and finds it unchanged
    target = "faust.transport.consumer:Consumer._drain_messages"
    assert pinned_object(target) is Consumer._drain_messages and PINNED[target] == hashlib.sha256(src).hexdigest()
    assert unpinned() == []

    class Base(Service):  # type: ignore[misc] # Faust's consumer as far as _deliver uses it
        suspend_flow = Event()

    async def main() -> None:
        consumer = lean_drain(Base)()
        got: list[int] = []
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

        async def put(m: int) -> None:  # the conductor putting the event into the stream's queue
            await queue.put(m)
            got.append(m)

        real_wait_first, consumer.wait_first = consumer.wait_first, None  # the inline path must not need it
        await consumer._deliver(put, 1)
        consumer.wait_first = real_wait_first
        blocked = asyncio.ensure_future(consumer._deliver(put, 2))  # queue full: Faust's wait_first
        await asyncio.sleep(0.01)
        assert got == [1] and not blocked.done()
        queue.get_nowait()
        await blocked
        blocked = asyncio.ensure_future(consumer._deliver(put, 3))
        await asyncio.sleep(0.01)
        consumer.suspend_flow.set()  # a rebalance: the record is dropped, re-fetched from its offset later
        await blocked
        assert got == [1, 2] and queue.qsize() == 1

    asyncio.run(main())
