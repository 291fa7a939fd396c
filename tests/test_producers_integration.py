"""Producers against the real broker and Redis: replay, the yfinance adapter with its Redis
watermark, multi-process synthetic load, an unreachable broker, a broker restart mid-replay (on a
private broker started here), SIGTERM, and the ingest benchmark on a tiny input."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from infra.procs import read_pid
from infra.services import LocalKafka
from minutecast.kafka import end_offsets, make_consumer
from minutecast.keys import Keys
from minutecast.schemas import parse_bar
from minutecast.settings import InfraSettings, KafkaSettings, ProducerSettings
from minutecast.topics import Topics
from minutecast.window import RETAIN, SESSION_TZ
from producers import replay
from producers.publisher import Publisher
from producers.throttle import Throttle
from producers.yfinance_source import YFinanceSource
from tests.support.bars import apply_in_process, check_run, frame_bars, interleaved, pick, replay_dir
from tests.support.cli import run_cli
from tests.support.services import free_port, free_port_pair

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def consume_all(ks: KafkaSettings, topic: str, expect: int, timeout_s: float = 90.0,
                settle_s: float = 2.0) -> list[tuple[str, bytes, int]]:
    """Every message of ``topic`` as (key, value, partition), in per-partition order; waits until
    ``expect`` arrived, then a little longer to catch extras (duplicates)."""
    consumer = make_consumer(ks, group=f"g-{uuid.uuid4().hex}")
    # Assign every partition from the start: no group coordinator, no rebalance wait.
    parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: list[tuple[str, bytes, int]] = []
    deadline = time.monotonic() + timeout_s
    quiet_until: float | None = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                out.append((msg.key().decode(), msg.value(), msg.partition()))
                continue
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + settle_s
                if time.monotonic() >= quiet_until:
                    break
    finally:
        consumer.close()
    return out


cli = partial(run_cli, "produce", timeout=240)


def per_ticker(msgs: list[tuple[str, bytes, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, value, _ in msgs:
        bar = parse_bar(value, key)
        out.setdefault(key, []).append(bar.minute)
    return out


def small_replay_dir(shared: Path, tmp: Path, tickers: tuple[str, ...], rows: int, bad: bool = True) -> Path:
    """The first ``rows`` lines of some real files (plain and gzip), plus (``bad``) one invalid and one NaN row."""
    out = tmp / "bars"
    out.mkdir()
    for i, t in enumerate(tickers):
        with gzip.open(shared / f"{t}.csv.gz", "rt") as fh:
            lines = [next(fh) for _ in range(rows + 1)]
        if i == 0 and bad:
            lines.append("2025-10-01T19:59:00-04:00,10,9,11,10,10,5\n")  # high below low -> dead letter
            lines.append("2025-10-01T19:58:00-04:00,,,,,,\n")  # NaN row -> counted, dropped
        if i % 2:
            with gzip.open(out / f"{t}.csv.gz", "wt") as fh:
                fh.writelines(lines)
        else:
            (out / f"{t}.csv").write_text("".join(lines))
    return out


def test_replay_publishes_exactly_the_valid_bars(shared_data: Path, tmp_path: Path, kafka: KafkaSettings,
                                                 topics: Topics) -> None:
    d = small_replay_dir(shared_data, tmp_path, ("AAPL", "MSFT", "NVDA"), 400)
    expected = replay.load(d)
    expected = expected[expected["high"] >= expected["low"]]
    expected = expected.dropna()
    res = cli("--source", "replay", "--path", str(d))
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"sent={len(expected)} delivered={len(expected)} failed=0 dead_letters=1 nan_dropped=1" in res.stdout

    msgs = consume_all(kafka, topics.bars, len(expected))
    assert len(msgs) == len(expected) == 1200
    got = per_ticker(msgs)
    for t, g in expected.groupby("ticker"):
        assert got[t] == g["minute"].tolist()  # every valid bar once, in order
    assert len({p for k, _, p in msgs if k == "AAPL"}) == 1  # key = ticker -> one partition
    bar = parse_bar(msgs[0][1], msgs[0][0])
    assert bar.source == "replay" and bar.published_at is not None and bar.published_at > time.time() - 600

    dead = consume_all(kafka, topics.deadletter, 1, settle_s=1)
    assert len(dead) == 1
    d0 = json.loads(dead[0][1])
    assert (d0["reason"], d0["stage"], d0["key"]) == ("high_below_low", "producer", "AAPL")


def _recorded(start_ny: str, minutes: int) -> pd.DataFrame:
    """A yf.download-shaped frame: (Price, Ticker) MultiIndex columns, New York index, gaps and NaN rows.

    MSFT has no bars at minutes 3-4 (NaN rows in the union index), BRK-B's minute 6 is a NaN row, and
    minute 8 of AAPL is missing entirely from the index of that ticker (filled as NaN by the union).
    """
    idx = pd.date_range(start_ny, periods=minutes, freq="1min", tz=SESSION_TZ, name="Datetime")
    base = {"AAPL": 250.0, "MSFT": 500.0, "BRK-B": 480.0}
    cols, data = [], []
    for fld in ("Adj Close", "Close", "High", "Low", "Open", "Volume"):
        for t, p in base.items():
            k = np.arange(minutes, dtype=float)
            close = p + 0.01 * k
            if fld == "High":
                v = close + 0.05
            elif fld == "Low":
                v = close - 0.05
            elif fld == "Volume":
                v = 1000 + k
            else:
                v = close
            m0 = int((idx[0] - pd.Timestamp("2025-10-01 10:00", tz=SESSION_TZ)).total_seconds() // 60)
            absolute = m0 + np.arange(minutes)
            if t == "MSFT":
                v = np.where((absolute >= 3) & (absolute <= 4), np.nan, v)
            if t == "BRK-B":
                v = np.where(absolute == 6, np.nan, v)
            if t == "AAPL":
                v = np.where(absolute == 8, np.nan, v)
            cols.append((fld, t))
            data.append(v)
    return pd.DataFrame(np.column_stack(data), index=idx,
                        columns=pd.MultiIndex.from_tuples(cols, names=["Price", "Ticker"]))


def test_yfinance_adapter_publishes_completed_bars_once_across_restarts(
        kafka: KafkaSettings, topics: Topics, redis_client: object, namespace: str) -> None:
    t10 = datetime(2025, 10, 1, 14, 0, tzinfo=UTC).timestamp()  # 10:00 New York
    now = [t10 + 10 * 60 + 30]  # 10:10:30: minute 10:10 is still in progress
    full = _recorded("2025-10-01 10:00", 15)  # what Yahoo will have served by 10:15

    def fetch(tickers: list[str], start: float, end: float) -> pd.DataFrame:
        """The recorded frame as Yahoo would serve it at now[0], including the minute in progress."""
        ts = full.index.tz_convert(UTC).map(lambda x: x.timestamp())
        keep = (ts >= start) & (ts < min(end, now[0])) & (ts <= now[0] - 30)
        part = full[keep]
        return part.loc[:, part.columns.get_level_values("Ticker").isin(tickers)]

    settings = ProducerSettings(namespace=namespace, flush_timeout_s=30)
    tickers = ["AAPL", "MSFT", "BRK-B"]

    def source() -> YFinanceSource:  # a "process start": watermarks come from Redis
        return YFinanceSource(Publisher(settings), redis_client, tickers, throttle=Throttle(0.0), fetch=fetch,
                              batch_size=2, clock=lambda: now[0])

    first = source()
    sent1 = first.backfill(1, progress=False)
    # minutes 0..9 are complete: 30 cells - MSFT 3,4 - BRK-B 6 - AAPL 8 = 26 bars
    assert sent1 == 26 and first.pub.stats.nan_dropped == 4 and first.pub.close().ok
    wm = Keys(namespace).producer_watermark("AAPL")
    assert wm.startswith(f"{namespace}:") and int(redis_client.get(wm)) == int(t10 + 9 * 60)  # type: ignore[attr-defined]

    # Overlapping poll in the same process: nothing new.
    assert first.poll_once(lookback_min=30) == 0

    # Restart at 10:15:30 with an overlapping fetch and an index in UTC: only minutes 10..14.
    now[0] = t10 + 15 * 60 + 30
    full.index = full.index.tz_convert("UTC")
    second = source()
    assert second.watermarks["MSFT"] == int(t10 + 9 * 60)
    assert second.poll_once(lookback_min=30) == 15
    assert second.poll_once(lookback_min=30) == 0
    assert second.live(delay_s=0.0, iterations=1, sleep=lambda d: now.__setitem__(0, now[0] + d)) == 0
    second.pub.close()

    msgs = consume_all(kafka, topics.bars, 41)
    got = per_ticker(msgs)
    assert len(msgs) == 41
    rel = {t: [(m - int(t10)) // 60 for m in ms] for t, ms in got.items()}
    assert rel["AAPL"] == [m for m in range(15) if m != 8]
    assert rel["MSFT"] == [m for m in range(15) if m not in (3, 4)]
    assert rel["BRK-B"] == [m for m in range(15) if m != 6]
    assert all(parse_bar(v, k).source == "yfinance" for k, v, _ in msgs)


def test_synthetic_multiprocess_publishes_every_bar_once(kafka: KafkaSettings, topics: Topics) -> None:
    res = cli("--source", "synthetic", "--tickers-count", "30", "--minutes", "20", "--seed", "3",
              "--processes", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sent=600 delivered=600 failed=0" in res.stdout
    got = per_ticker(consume_all(kafka, topics.bars, 600))
    assert len(got) == 30 and all(len(v) == 20 and v == sorted(set(v)) for v in got.values())


def test_unreachable_broker_fails_clearly(namespace: str) -> None:
    port = free_port()  # nobody listens there
    res = cli("--source", "synthetic", "--tickers-count", "2", "--minutes", "3",
              env={"MINUTECAST_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "MINUTECAST_CONNECT_TIMEOUT_S": "3"},
              timeout=120)
    assert res.returncode == 1
    assert f"Kafka at 127.0.0.1:{port} did not answer within 3 s" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigterm_flushes_and_reports(shared_data: Path, kafka: KafkaSettings, topics: Topics) -> None:
    # 20 tickers at 600x real time: ~1 s of wall time per 10 minutes of bars; stopped after ~2 s.
    proc = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path",
                             str(shared_data), "--speed", "600", "--limit", "20000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not topic_has_messages(kafka, topics.bars):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    line = next(x for x in out.splitlines() if x.startswith("produce replay:"))
    fields = dict(kv.split("=") for kv in line.split(":", 1)[1].split(" in ")[0].split())
    sent = int(fields["sent"])
    assert 0 < sent < 20000 and fields["delivered"] == fields["sent"] and fields["failed"] == "0"
    assert len(consume_all(kafka, topics.bars, sent)) == sent


def topic_has_messages(ks: KafkaSettings, topic: str) -> bool:
    try:
        return sum(end_offsets(ks, topic, timeout_s=5).values()) > 0
    except Exception:  # noqa: BLE001 - topic metadata not there yet
        return False


@pytest.fixture
def private_kafka(tmp_path: Path, services: InfraSettings) -> Iterator[tuple[LocalKafka, KafkaSettings]]:
    """A second, private single-node broker (own home, own ports) that this test may stop and start."""
    port = free_port_pair()
    ks = KafkaSettings(bootstrap=f"127.0.0.1:{port}")
    s = InfraSettings(home=tmp_path / "home", kafka=ks, kafka_heap="384m", start_timeout_s=120)
    broker = LocalKafka(s)
    broker.up()
    try:
        yield broker, ks
    finally:
        broker.down()


def _crash(broker: LocalKafka) -> None:
    """SIGKILL the private broker (our child) and wait until it is gone: in-flight produce requests may be
    written without their acks."""
    pid = read_pid(broker.pidfile)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):  # reap it (our child), so `up` sees it gone
        os.waitpid(pid, 0)
    while read_pid(broker.pidfile) is not None:
        time.sleep(0.1)


@pytest.mark.faults
def test_broker_restart_mid_replay_loses_and_duplicates_nothing(
        tmp_path: Path, namespace: str, redis_client: object, private_kafka: tuple[LocalKafka, KafkaSettings]) -> None:
    """The broker SIGKILLed early and again inside the last RETAIN minutes of a paced replay (2 tickers x 150
    minutes): every bar once in the topic, in order; the topic applied by the worker's batch code passes
    ``check_run`` against the no-fault run; the same topic with the test-only switch losing one bar fails it."""
    broker, ks = private_kafka
    d = replay_dir(tmp_path / "bars", interleaved(("AAPL", "MSFT"), 150))
    sent = frame_bars(d)
    total, first = len(sent), sent[0].minute
    late = 150 - RETAIN + 20  # minute 80 of 150: inside every ticker's last RETAIN minutes
    # Paced to last ~36 s of wall time; the broker goes away twice for a few seconds.
    speed = (sent[-1].minute - first) / 36.0
    proc = subprocess.Popen([sys.executable, "-m", "minutecast.cli", "produce", "--source", "replay", "--path",
                             str(d), "--speed", f"{speed:.1f}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True,
                            cwd=REPO, env={**os.environ, "MINUTECAST_KAFKA_BOOTSTRAP": ks.bootstrap,
                                           "MINUTECAST_FLUSH_TIMEOUT_S": "120"})
    topic = Topics(namespace).bars

    def in_topic() -> int:
        try:
            return sum(end_offsets(ks, topic, timeout_s=5).values())
        except Exception:  # noqa: BLE001 - topic metadata not there yet
            return 0

    for what, reached in (("early", 1), ("inside the last RETAIN minutes", 2 * late)):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and in_topic() < reached:
            time.sleep(0.3)
        at = in_topic()
        _crash(broker)
        assert proc.poll() is None, f"replay finished before the broker went down ({what})"
        print(f"broker SIGKILLed {what}: {at} of {total} bars in the topic")
        time.sleep(3)
        broker.up()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert f"sent={total} delivered={total} failed=0" in out
    msgs = consume_all(ks, topic, total, timeout_s=120, settle_s=3)
    assert len(msgs) == total
    got = per_ticker(msgs)
    for t in ("AAPL", "MSFT"):
        assert got[t] == [b.minute for b in sent if b.ticker == t]  # no loss, no duplicate, in order
    bars = [parse_bar(v, k) for k, v, _ in msgs]
    reference = apply_in_process(redis_client, sent)  # the no-fault run: one batch per minute
    check_run(apply_in_process(redis_client, bars, batch=50), reference, total)
    # Drop variant: the same topic, with the switch losing one bar inside the last RETAIN minutes.
    victim = pick(sent, "AAPL", -20)
    with pytest.raises(AssertionError) as caught:
        check_run(apply_in_process(redis_client, bars, batch=50, drop=victim), reference, total)
    print(f"losing {victim.ticker} {victim.minute}: {caught.value}")


def test_ingest_benchmark_emits_json_on_tiny_input(shared_data: Path, services: InfraSettings) -> None:
    res = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--quick", "--limit", "2000", "--baseline", "50",
                          "--path", str(shared_data)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["bars"] == 2000
    assert result["bars_per_s"] > 0 and result["baseline_bars_per_s"] > 0 and result["bars_per_s_2proc"] > 0
    assert result["messages_in_topic"] == result["messages_expected"] == 1 + 50 + 2 * 2000
    assert "timed" in result and result["speedup"] == pytest.approx(result["bars_per_s"]
                                                                    / result["baseline_bars_per_s"], abs=0.06)
