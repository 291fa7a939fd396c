"""The Faust worker end to end, with the real Kafka and Redis, workers as subprocesses.

* bad messages -> dead letters with their reason while the good bars around them land; duplicates,
  out-of-order and late bars; window-ready events after the write, for ready windows only; metrics;
* a worker killed with SIGKILL mid-replay and restarted ends with the windows of a clean run;
  deleting the namespace's keys and rebuilding (at start-up, and ``minutecast rebuild``) too;
* two workers in one group (one joining mid-stream: a rebalance) give the result of one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from infra.procs import terminate
from minutecast.kafka import make_consumer, make_producer
from minutecast.keys import Keys
from minutecast.schemas import Bar, WindowReady
from minutecast.settings import KafkaSettings, StreamSettings
from minutecast.topics import Topics
from minutecast.window import GAP, MINUTE, RETAIN
from streams.window_store import WindowStore, read_window, window_for
from tests.test_streams_state import OPEN, make_bars

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
# Keys land by CRC32 (librdkafka's default partitioner): these five cover all 3 test partitions.
TICKERS = ("AAPL", "MSFT", "NVDA", "TSLA", "INTC")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               procs: list[subprocess.Popen[bytes]] | None = None, poll: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for p in procs or []:
            assert p.poll() is None, f"worker exited with {p.returncode} while waiting for {what}"
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def committed_all(kafka: KafkaSettings, namespace: str, topic: str) -> bool:
    """True when the worker group's committed offsets reached the end of every partition."""
    group = f"{StreamSettings().app_id}-{namespace}"
    c = make_consumer(kafka, group=group)
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        tps = [TopicPartition(topic, p) for p in parts]
        committed = c.committed(tps, timeout=10)
        for tp in committed:
            low, high = c.get_watermark_offsets(tp, timeout=10)
            if high > low and tp.offset < high:  # an empty partition has nothing to commit
                return False
        return True
    finally:
        c.close()


def read_topic(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` (up to the end offsets seen now)."""
    c = make_consumer(kafka, group=f"reader-{time.time_ns()}")
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions}
        todo = {p for p, e in ends.items() if e > 0}
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        out: list[tuple[bytes | None, bytes]] = []
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            for m in c.consume(500, timeout=0.5):
                if m.error() is None:
                    out.append((m.key(), m.value()))
                    if m.offset() >= ends[m.partition()] - 1:
                        todo.discard(m.partition())
        return out
    finally:
        c.close()


def snapshot(client: Any, namespace: str) -> dict[str, tuple[dict[bytes, bytes], bytes | None]]:
    """Every ticker's window hash and newest minute in the namespace."""
    keys = Keys(namespace)
    out = {}
    for k in client.scan_iter(match=keys.window_pattern(), count=1000):
        ticker = k.decode().rsplit(":", 1)[1]
        out[ticker] = (client.hgetall(k), client.hget(keys.window_meta(ticker), "max"))
    return out


def reference(client: Any, namespace: str, bars: list[Bar]) -> dict[str, tuple[dict[bytes, bytes], bytes | None]]:
    """The windows a clean in-order application of ``bars`` gives (computed in a scratch namespace)."""
    ns = f"{namespace}ref"
    try:
        WindowStore(client, Keys(ns), 3600).apply(sorted(bars, key=lambda b: (b.ticker, b.minute)))
        return snapshot(client, ns)
    finally:
        keys = list(client.scan_iter(match=Keys(ns).namespace_pattern()))
        if keys:
            client.delete(*keys)


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
    assert all(len(h) == RETAIN for h, _ in snapshot(redis_client, namespace).values())
    assert str(OPEN).encode() not in redis_client.hgetall(keys.window("AAPL"))

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
        from minutecast.window import checksum
        assert ready[t].checksum == checksum(win)
        assert ready[t].published_at == rows[-1].published_at and ready[t].ready_at > 0
    # TSLA's 10-minute gap is inside its last window: collapsed, the bar after it marked, still announced
    tsla = window_for(read_window(redis_client, keys, "TSLA"), last)
    assert tsla is not None and tsla[tsla[:, MINUTE] == OPEN + 60 * 130, GAP].tolist() == [1.0]
    meta = redis_client.hgetall(keys.window_meta("AAPL"))
    assert int(meta[b"ready"]) == last and meta[b"sum"].decode() == ready["AAPL"].checksum

    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()  # noqa: S310
    assert f"minutecast_stream_bars_in_total {float(len(recs))}" in body
    assert 'minutecast_stream_deadletters_total{reason="not_json"} 1.0' in body
    assert "minutecast_stream_late_dropped_total" in body and "minutecast_stream_consumer_lag" in body


@pytest.mark.faults
def test_sigkill_mid_replay_then_flush_and_rebuild_give_the_clean_windows(
        topics: Topics, kafka: KafkaSettings, redis_client: Any, namespace: str,
        workers: Callable[..., Any]) -> None:
    bars = dataset(400)
    produce(kafka, topics.bars, bar_records(bars))
    expected = reference(redis_client, namespace, bars)
    keys = Keys(namespace)

    # Small batches so the replay takes a while; kill -9 once part of it is applied.
    slow = {"MINUTECAST_TAKE_MAX": "4", "MINUTECAST_TAKE_WITHIN_S": "0.01"}
    w = workers("--no-rebuild", env=slow)
    wait_until(lambda: int(redis_client.hget(keys.stats(), "stream_messages") or 0) > 40, 120, "replay started", [w],
               poll=0.01)
    os.kill(w.pid, signal.SIGKILL)
    w.wait(10)
    assert int(redis_client.hget(keys.stats(), "stream_messages") or 0) < len(bars), "killed too late to matter"

    w2 = workers(env=slow)
    wait_until(lambda: committed_all(kafka, namespace, topics.bars), 180, "restarted worker caught up", [w2])
    assert snapshot(redis_client, namespace) == expected
    w2.send_signal(signal.SIGTERM)
    w2.wait(30)

    # Redis lost the namespace: the next worker rebuilds at start-up (before consuming anything new).
    delete_namespace_keys(redis_client, namespace)
    w3 = workers()
    wait_until(lambda: len(snapshot(redis_client, namespace)) == len(TICKERS), 120, "start-up rebuild", [w3])
    wait_until(lambda: snapshot(redis_client, namespace) == expected, 60, "rebuilt windows", [w3])
    w3.send_signal(signal.SIGTERM)
    w3.wait(30)

    # ... and by hand.
    delete_namespace_keys(redis_client, namespace)
    out = subprocess.run([sys.executable, "-m", "minutecast.cli", "rebuild"], cwd=REPO,
                         capture_output=True, text=True, timeout=180, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["bars"] == len(bars) and report["tickers"] == len(TICKERS)
    assert snapshot(redis_client, namespace) == expected


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
    assert all(len(h) == RETAIN for h, _ in snapshot(redis_client, namespace).values())
    # both workers took part (every partition holds data, so each member's share has some)
    per_worker = [_scrape(port, "minutecast_stream_bars_in_total") for port in ports]
    assert sum(per_worker) >= len(bars) and all(n > 0 for n in per_worker), per_worker


def _scrape(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()  # noqa: S310
    return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " "))

