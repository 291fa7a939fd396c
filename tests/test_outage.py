"""A dependency's outage under `minutecast run` (issue #29, marker ``faults``): the run rides it out.

Each test starts the whole pipeline (`minutecast run`: as-if-live replay, Faust worker, Spark job, web) on a
private broker and a private Redis (own home, own ports), waits for fresh forecasts, then takes one dependency
away -- Redis SIGKILLed, or the broker SIGKILLed -- for :data:`OUTAGE_S`, and brings it back. It asserts:

* the run is still up through the outage and after it (no service given up on, nothing stopped);
* the outage is reported while it lasts: the supervisor's summary line ("waiting for Redis since ..."),
  `minutecast status`'s data (``waiting``: which services wait for what) and the producer's
  ``minutecast_dependency_up{dependency=...}`` gauge at 0;
* forecasts are fresh again within :data:`FRESH_S` of the dependency's return, for every ticker (after
  Redis: the forecasts it lost are repaired);
* nothing was lost: every bar on the bar topic from the outage on (up to a snapshot the worker has committed)
  is in the windows with its values.

"Longer than today's restart budget": the run gets ``MINUTECAST_RESTART_MAX=1``, so code that counts a
service ending during an outage against its budget gives the run up inside the outage (the code before #29:
a producer that waited 30 s for Redis twice; a Spark job whose Kafka sink failed after 60 s, then waited 60 s
for the broker at its restart): :data:`OUTAGE_S` outlasts both.

    CI=true ~/.cache/minutecast/venv/bin/python -m pytest tests/test_outage.py -x -q -s
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition
from pydantic import SecretStr

from infra.services import LocalKafka, LocalRedis
from minutecast.kafka import make_consumer
from minutecast.keys import Keys
from minutecast.redis import connect
from minutecast.schemas import Bar, parse_bar
from minutecast.settings import InfraSettings, KafkaSettings, RedisSettings, StreamSettings
from minutecast.topics import Topics
from ops import status
from ops.forecast import forecast_times
from tests.support.bars import OPEN, interleaved, replay_dir, windows
from tests.support.services import free_port, free_port_pair, kill_pidfile, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.faults]
REPO = Path(__file__).resolve().parents[1]
TICKERS = ("AAPL", "MSFT", "NVDA", "SPY")
DAY = 86400
# Longer than the old code lasted with a restart budget of 1: Redis, a producer that waited 30 s twice; Kafka,
# a Spark job whose sink gave up after 60 s, then waited 60 s for the broker at its restart.
# The issue's own run (default budget of 5, 6 minutes away, at a pace that keeps 6 minutes inside the windows):
#   MINUTECAST_TEST_OUTAGE_S=360 MINUTECAST_TEST_RESTART_MAX=5 MINUTECAST_TEST_SPEED=10 pytest tests/test_outage.py
_LONG = float(os.environ.get("MINUTECAST_TEST_OUTAGE_S", 0))
OUTAGE_S = {"redis": _LONG or 75.0, "kafka": _LONG or 130.0}
FRESH_S = 60.0  # forecasts are fresh again this soon after the dependency's return
RESTART_MAX = os.environ.get("MINUTECAST_TEST_RESTART_MAX", "1")  # the run's restart budget (default 5)
AFTER_MINUTES = 6  # the nothing-lost check covers at least this many market minutes published from the outage on
# Market minutes per wall minute: outage + recovery stay inside the window store's 90 newest bars.
SPEED = os.environ.get("MINUTECAST_TEST_SPEED", "24")


@dataclass
class Pipeline:
    """A `minutecast run` on private services, and what the test saw of it."""

    s: InfraSettings
    broker: LocalKafka
    redis_server: LocalRedis
    proc: subprocess.Popen[bytes]
    metrics_port: int
    lines: list[str] = field(default_factory=list)

    def out(self) -> str:
        return "".join(self.lines)

    def client(self) -> object:
        return connect(self.s.redis, socket_timeout=3, socket_connect_timeout=2)  # a client that never waits

    def newest_forecasts(self) -> list[float]:
        """forecast_at of every ticker's latest forecast ([] while Redis is away)."""
        try:
            c = self.client()
            try:
                return forecast_times(c, Keys(self.s.namespace))
            finally:
                c.close()  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - Redis is away on purpose part of the time
            return []

    def up(self) -> bool:
        """The run goes on: its supervisor runs and has not stopped the services (it says "stopping: ..."
        before it stops them, whatever the reason: a service given up on, a signal)."""
        return self.proc.poll() is None and not any(x.startswith("stopping: ") for x in self.lines)

    def metric(self, dep: str) -> float | None:
        """The producer's minutecast_dependency_up{dependency=dep} (None when not scraped)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=3) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(f'minutecast_dependency_up{{dependency="{dep}"}}'):
                return float(line.split()[-1])
        return None


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    home = tmp_path / "home"
    password = LocalRedis(InfraSettings(home=home)).password()  # generated in the private home (0600)
    ns = f"t{uuid.uuid4().hex[:12]}"
    s = InfraSettings(home=home, namespace=ns, kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port_pair()}"),
                      redis=RedisSettings(port=free_port(), password=SecretStr(password)),
                      kafka_heap="384m", start_timeout_s=120)
    broker, redis_server = LocalKafka(s), LocalRedis(s)
    data = replay_dir(tmp_path / "bars", [*interleaved(TICKERS, 390), *interleaved(TICKERS, 390, OPEN + DAY)])
    metrics_port = free_port()
    env = os.environ | {
        "MINUTECAST_HOME": str(home), "MINUTECAST_NAMESPACE": ns, "MINUTECAST_KAFKA_BOOTSTRAP": s.kafka.bootstrap,
        "MINUTECAST_REDIS_PORT": str(s.redis.port), "MINUTECAST_REDIS_PASSWORD": password,
        "MINUTECAST_KAFKA_HEAP": "384m", "MINUTECAST_RESTART_MAX": RESTART_MAX,
        "MINUTECAST_SERVE_PORT": str(free_port()),
        "MINUTECAST_WEB_PORT": "0", "MINUTECAST_METRICS_PORT": "0",  # the producer's alone (below), no race
        "MINUTECAST_PRODUCER_METRICS_PORT": str(metrics_port), "MINUTECAST_BAR_PARTITIONS": "3",
        "MINUTECAST_COMMIT_INTERVAL_S": "0.5", "PYTHONUNBUFFERED": "1"}
    try:
        redis_server.up()
        broker.up()
        cmd = [sys.executable, "-m", "minutecast.cli", "run", "--source", "replay", "--replay-data", str(data),
               "--speed", SPEED, "--no-train", "--summary-every", "5"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        p = Pipeline(s, broker, redis_server, proc, metrics_port)

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                p.lines.append(raw.decode(errors="replace"))

        threading.Thread(target=read, daemon=True).start()
        try:
            yield p
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(120)
            if proc.poll() is None:
                proc.kill()
            print(p.out()[-4000:])
            for log in sorted((home / "logs").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}")
    finally:
        with contextlib.suppress(Exception):
            broker.down()
        with contextlib.suppress(Exception):
            redis_server.down()


def fresh(p: Pipeline, since: float) -> bool:
    """Every ticker has a forecast made after ``since`` (epoch s)."""
    stamps = p.newest_forecasts()
    return len(stamps) == len(TICKERS) and min(stamps) > since


def ride_out(p: Pipeline, dep: str, take_away: object, bring_back: object) -> float:
    """Fresh forecasts, then ``dep`` away for its outage (watching the run and the reports), then back; every
    expectation is checked and all that failed are reported together. Returns the epoch second it went away."""
    wait_until(lambda: fresh(p, time.time() - 20), 300, "fresh forecasts before the outage")
    assert p.up(), p.out()[-3000:]
    started = time.time()
    take_away()  # type: ignore[operator]
    print(f"{dep} taken away at {time.strftime('%H:%M:%S')}")
    seen: dict[str, object] = {}
    name = {"redis": "Redis", "kafka": "Kafka"}[dep]
    problems = []
    while time.time() - started < OUTAGE_S[dep]:
        if not p.up():
            problems.append(f"the run ended during the {name} outage ({time.time() - started:.0f} s into it)")
            break
        if "status" not in seen and OUTAGE_S[dep] - (time.time() - started) > 40:  # a collect may take 30 s
            out = status.collect(0.1, p.s)
            if out.get("waiting") and any(dep in w for w in out["waiting"].values()):
                seen["status"] = status.render(out)
        if "metric" not in seen and p.metric(dep) == 0.0:
            seen["metric"] = True
        time.sleep(2)
    back_at = time.time()
    bring_back()  # type: ignore[operator]
    print(f"{dep} back at {time.strftime('%H:%M:%S')}; seen while away: {sorted(seen)}")
    if p.up():
        try:
            wait_until(lambda: fresh(p, back_at), FRESH_S, f"fresh forecasts within {FRESH_S:.0f} s of the return")
            print(f"forecasts fresh again {time.time() - back_at:.0f} s after the return")
        except AssertionError as exc:
            problems.append(str(exc))
    if not p.up() or "giving up" in p.out():
        problems.append("the run is not up after the outage (a service given up on, or stopped)")
    if not any(f"waiting for {name} since" in x for x in p.lines):
        problems.append(f"no summary line said the run waits for {name}")
    if f"waiting for {name} since" not in str(seen.get("status", "")):
        problems.append(f"`minutecast status` never showed a service waiting for {name}")
    if "metric" not in seen:
        problems.append(f"the producer's minutecast_dependency_up{{dependency={dep!r}}} never went to 0")
    assert not problems, "\n".join(problems) + "\n" + p.out()[-3000:]
    return started


def bars_up_to(ks: KafkaSettings, topic: str, ends: dict[int, int]) -> list[Bar]:
    """The bars of ``topic`` below ``ends`` (partition -> offset)."""
    c = make_consumer(ks, group=f"check-{uuid.uuid4().hex[:8]}")
    c.assign([TopicPartition(topic, part, 0) for part in ends])
    got: dict[int, list[Bar]] = {part: [] for part in ends}
    deadline = time.monotonic() + 60
    try:
        while any(len(got[x]) < ends[x] for x in ends) and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=1):
                part, offset = m.partition(), m.offset()
                if m.error() is None and part is not None and offset is not None and offset < ends[part]:
                    got[part].append(parse_bar(m.value(), m.key()))
    finally:
        c.close()
    return [b for bars in got.values() for b in bars]


def committed(ks: KafkaSettings, ns: str, topic: str, ends: dict[int, int]) -> bool:
    c = make_consumer(ks, group=f"{StreamSettings().app_id}-{ns}")
    try:
        parts = [TopicPartition(topic, x) for x, end in ends.items() if end > 0]  # an empty one has no offset
        return all(tp.offset >= ends[tp.partition] for tp in c.committed(parts, timeout=10))
    finally:
        c.close()


def nothing_lost(p: Pipeline, outage_started: float) -> None:
    """Every bar on the topic published from the outage on (up to a snapshot the worker committed) is in the
    windows with its values."""
    topic = Topics(p.s.namespace).bars

    def snapshot() -> tuple[dict[int, int], list[Bar]]:
        c = make_consumer(p.s.kafka, group="check-ends")
        try:
            ends = {x: c.get_watermark_offsets(TopicPartition(topic, x), timeout=10)[1] for x in range(3)}
        finally:
            c.close()
        bars = bars_up_to(p.s.kafka, topic, ends)
        assert len(bars) == sum(ends.values()), "could not read the snapshot"
        return ends, [b for b in bars if (b.published_at or 0) >= outage_started - 1]

    # The producer resumes after its back-off (up to MINUTECAST_DEPENDENCY_BACKOFF_MAX_S) and its reconnect: the
    # snapshot is taken once AFTER_MINUTES market minutes of bars published from the outage on are on the topic
    # (fresh forecasts can come sooner, from bars published just before the outage).
    deadline = time.monotonic() + 90
    ends, during = snapshot()
    while len(during) < AFTER_MINUTES * len(TICKERS) and time.monotonic() < deadline:
        time.sleep(2)
        ends, during = snapshot()
    assert len(during) >= AFTER_MINUTES * len(TICKERS), \
        f"only {len(during)} bars published from the outage on, 90 s after its end"
    wait_until(lambda: committed(p.s.kafka, p.s.namespace, topic, ends), 120, "the worker committed the snapshot")
    client = p.client()
    stored = windows(client, p.s.namespace)
    client.close()  # type: ignore[attr-defined]
    missing = [(b.ticker, b.minute) for b in during
               if b.minute not in stored.get(b.ticker, {}) or abs(stored[b.ticker][b.minute][3] - b.close) > 1e-9]
    print(f"{len(during)} bars published from the outage on, {len(missing)} missing from the windows")
    assert not missing, f"bars lost: {missing[:10]}"


def test_redis_sigkilled_longer_than_the_restart_budget_lasts_is_ridden_out(pipeline: Pipeline) -> None:
    p = pipeline
    started = ride_out(p, "redis", lambda: kill_pidfile(p.redis_server.pidfile, p.s.redis.port),
                       p.redis_server.up)
    nothing_lost(p, started)


def test_broker_stopped_longer_than_the_restart_budget_lasts_is_ridden_out(pipeline: Pipeline) -> None:
    p = pipeline
    port = int(p.s.kafka.bootstrap.rsplit(":", 1)[1])
    started = ride_out(p, "kafka", lambda: kill_pidfile(p.broker.pidfile, port), p.broker.up)
    nothing_lost(p, started)
