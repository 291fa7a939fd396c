"""Benchmark: the whole pipeline on this machine, producer -> Kafka -> Faust -> Redis -> Spark -> Kafka/Redis.

    python -m benchmarks.e2e                     # 503 tickers, 90 minutes, one burst every 10 s (real shape)
    python -m benchmarks.e2e --quick             # 503 tickers, 25 minutes
    python -m benchmarks.e2e --minute-s 1        # 60x stress: a minute's burst every second
    python -m benchmarks.e2e --tickers 5000 --bars-per-s 5000  # or any pace in bars/s

Pace (printed in the JSON as ``pace``): every minute's bars are published together as one burst, like a live
feed at the minute boundary; ``--minute-s`` is the time between bursts (default 10 s: bursts that do not
overlap, the real shape of a minute, accelerated 6x), ``--minute-s 1`` the 60x stress.

In a fresh uuid namespace (topics and keys deleted afterwards) it starts the Faust worker
(``python -m minutecast.cli stream``) and the Spark job (``python -m minutecast.cli infer``) as
subprocesses, promotes a randomly initialised seed-architecture LSTM into a temporary registry (so the
model really runs; ``--persistence`` skips that), publishes 59 minutes of warm-up bars for every ticker,
waits for the first forecasts (Spark start, TensorFlow load), then publishes one bar per ticker per
accelerated minute, each minute as one burst like a live feed at the minute boundary.

``--standalone``: ``infer --master`` a private standalone cluster (:mod:`infra.spark_cluster`, 2 workers of 1
core, 1 GiB; stopped afterwards); ``rss_peak_mb`` adds ``spark_master``, ``spark_worker_<i>`` (with executors).

``--tickers N``: the first N S&P 500 names, beyond its 503 generated ones (``S00000`` ...); the worker's
ticker allowlist is switched off for the run so they are admitted.

Reported (from the forecasts themselves): p50/p95/p99/max of ``forecast_at - published_at`` over the
timed minutes, forecasts vs windows announced, bars/s achieved, ``backlog_growing`` (latency of the last
third of the minutes clearly above the first third, or the pipeline needing long to drain after the last
minute; ``p50_ms_by_minute`` is the trend behind it), and the micro-batch duration with its split (Redis
read, window build, model, Redis writes; summed over partitions) from the job's per-batch stats;
``p50_ms``/``p95_ms``/``p99_ms`` repeat the latency percentiles in ms. ``stages``: where the time goes,
p50/p95/p99 ms per stage (producer -> broker, Faust, ready -> Spark batch, engine, model, Redis write,
Kafka write, totals; :mod:`benchmarks.stages`), also printed as a table on stderr. Memory: ``rss_peak_mb`` =
peak resident MiB per service during the run (producer = this process, Faust worker, Spark driver + JVM +
Python workers, Redis, Kafka), sampled every 0.5 s.
Last stdout line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import stages
from benchmarks.redis_memory import bytes_per_ticker
from benchmarks.rss import RssSampler, listener_pid
from benchmarks.state import tickers
from infra.procs import read_pid
from infra.spark_cluster import Cluster
from minutecast.errors import InfraError, ModelError, ServiceUnavailable
from minutecast.features import Scaler
from minutecast.kafka import ensure_topics, make_admin, make_consumer, make_producer
from minutecast.keys import Keys
from minutecast.model import build_model, get_preset
from minutecast.redis import connect
from minutecast.registry import Registry
from minutecast.schemas import Bar, Forecast
from minutecast.settings import InferenceSettings
from minutecast.topics import Topics
from minutecast.window import SESSION_TZ, WINDOW
from web.server import free_port

REPO = Path(__file__).resolve().parents[1]
GOAL_P99_S = 1.5




def session_start() -> int:
    """00:00 New York two days ago (epoch s): a whole session of past minutes, none in the future."""
    day = (datetime.now(SESSION_TZ) - timedelta(days=2)).date()
    return int(datetime(day.year, day.month, day.day, tzinfo=SESSION_TZ).timestamp())


class Feed:
    """Random-walk bars for every ticker, one minute at a time, published with the producer's clock.

    Every bar's delivery latency (librdkafka: ``produce()`` -> broker ack) is kept, per minute index and
    ticker, in :attr:`delivery_s` (NaN until its delivery report comes). librdkafka measures it when the
    report is served, so a thread serves them as they arrive (:meth:`serve_reports`); served only by the publishing
    loop's ``poll`` they would read as the time to the next minute."""

    def __init__(self, names: list[str], start: int, kafka: Any, topic: str) -> None:
        self.names, self.start, self.topic = names, start, topic
        self.index = {n.encode(): i for i, n in enumerate(names)}
        self.rng = np.random.default_rng(0)
        self.close = 50 + 400 * self.rng.random(len(names))
        self.producer = make_producer(kafka)
        self.sent = 0
        self.failed = 0
        self.delivery_s: dict[int, np.ndarray] = {}  # minute index -> s per ticker (array: 8 B a bar)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._serve, name="delivery-reports", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)  # returns as soon as a report is there (librdkafka is thread-safe)

    def serve_reports(self) -> None:
        self._poller.start()

    def stop_reports(self) -> None:
        self._stop.set()
        if self._poller.is_alive():
            self._poller.join(5)

    def _delivered(self, i: int, err: Any, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            return
        latency = msg.latency()
        if latency is not None:
            self.delivery_s[i][self.index[msg.key()]] = latency

    def delivery(self, ticker: str, minute: int) -> float | None:
        """The delivery latency (s) of ``ticker``'s bar at ``minute`` (epoch s), None if unknown."""
        arr = self.delivery_s.get((minute - self.start) // 60)
        x = None if arr is None else float(arr[self.index[ticker.encode()]])
        return None if x is None or x != x else x

    def minute(self, i: int) -> float:
        """Publish minute i of every ticker; returns the publish time of its first bar."""
        self.close *= np.exp(self.rng.normal(0, 5e-4, len(self.names)))
        vol = self.rng.integers(1_000, 100_000, len(self.names))
        self.delivery_s[i] = np.full(len(self.names), np.nan)
        on_delivery = partial(self._delivered, i)
        t0 = time.time()
        for name, c, v in zip(self.names, self.close, vol, strict=True):
            c = round(float(c), 4)
            bar = Bar(name, self.start + 60 * i, c, c, c, c, float(v), "bench", published_at=time.time())
            while True:
                try:
                    self.producer.produce(self.topic, bar.to_json(), name.encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    self.producer.poll(0.01)
        self.sent += len(self.names)
        self.producer.poll(0)
        return t0


def promote_random_model(models_dir: Path) -> str:
    """A randomly initialised default-architecture model, promoted: the model's speed is what counts here."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before build_model imports TensorFlow
    registry = Registry(models_dir)
    version = registry.save(build_model(get_preset("default")), Scaler(
        ret_scale=1e-3, gap_scale=3e-3, range_scale=1.5e-3, logvol_mean=9.0, logvol_std=1.0, mkt_ret_scale=3e-4,
        mkt_range_scale=5e-4, target_scale=2e-3),
                            {"note": "benchmarks.e2e: random weights"})
    registry.promote(version)
    return version


def promote_in_subprocess(models_dir: Path) -> str:
    """promote_random_model in a child process: TensorFlow stays out of this process (the producer), so the
    producer's RSS is the producer's."""
    code = ("import sys; from pathlib import Path; from benchmarks.e2e import promote_random_model; "
            "print(promote_random_model(Path(sys.argv[1])))")
    res = subprocess.run([sys.executable, "-c", code, str(models_dir)], cwd=REPO, capture_output=True, text=True,
                         env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300, check=False)
    if res.returncode != 0:
        raise ModelError(f"could not promote a random model: {res.stderr[-2000:]}")
    return res.stdout.strip().splitlines()[-1]


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="25 timed minutes instead of 90")
    ap.add_argument("--minutes", type=int, help="timed accelerated minutes")
    ap.add_argument("--tickers", type=int, default=503,
                    help="any number: the S&P 500 names, then generated ones (S00000 ...) beyond 503")
    ap.add_argument("--minute-s", type=float, default=10.0,
                    help="seconds between two minutes' bursts (10: the real shape; 1: the 60x stress)")
    ap.add_argument("--bars-per-s", type=float, help="publish pace in bars/s (overrides --minute-s)")
    ap.add_argument("--trigger-ms", type=int, default=200, help="the Spark job's trigger interval")
    ap.add_argument("--persistence", action="store_true", help="no model: serve the persistence baseline")
    ap.add_argument("--no-shuffle", action="store_true",
                    help="coalesce Kafka partitions instead of shuffling by ticker (MINUTECAST_SHUFFLE_BY_TICKER)")
    ap.add_argument("--partitions", type=int, help="partitions per micro-batch (default: settings)")
    ap.add_argument("--keep", action="store_true", help="keep the namespace, logs and stats afterwards")
    ap.add_argument("--standalone", action="store_true", help="the Spark job on a private master + 2 workers")
    ap.add_argument("--timeline-s", type=float, help="record RSS per service and Redis used_memory every S s "
                    "(``rss_timeline`` in the JSON; benchmarks.soak)")
    args = ap.parse_args(argv)

    names = tickers(args.tickers)
    minutes = args.minutes or (25 if args.quick else 90)
    rate = args.bars_per_s or len(names) / args.minute_s
    period = len(names) / rate  # seconds per accelerated minute
    ns = f"e2e{uuid.uuid4().hex[:10]}"
    work = Path(tempfile.mkdtemp(prefix=f"minutecast-{ns}-"))
    base = InferenceSettings()
    assert base.redis.password is not None
    env = os.environ | {"MINUTECAST_NAMESPACE": ns, "MINUTECAST_TICKER_ALLOWLIST": "false",  # generated names
                        "MINUTECAST_REDIS_PASSWORD": base.redis.password.get_secret_value()}
    infer_env = env | {"MINUTECAST_HOME": str(work / "home")}  # private registry and checkpoint
    if args.no_shuffle:
        infer_env["MINUTECAST_SHUFFLE_BY_TICKER"] = "false"
    if args.partitions:
        infer_env["MINUTECAST_PARTITIONS"] = str(args.partitions)
    topics, keys = Topics(ns), Keys(ns)
    result: dict[str, Any] = {"benchmark": "e2e", "quick": args.quick, "namespace": ns, "tickers": len(names),
                              "timed_minutes": minutes, "target_bars_per_s": rate, "standalone": args.standalone,
                              "minute_s": round(period, 3),
                              "pace": f"a burst of {len(names)} bars every {period:g} s"
                              + (" (the real shape, 6x)" if period >= 10 else f" ({60 / period:g}x stress)")}
    procs: list[subprocess.Popen[bytes]] = []
    cluster = Cluster(work / "spark-cluster", port=free_port(), ui_port=free_port()) if args.standalone else None
    stats_path = work / "batches.jsonl"
    rss = RssSampler(timeline_s=args.timeline_s)
    try:
        ensure_topics(base.kafka, topics.specs())
        if not args.persistence:
            result["model_version"] = promote_in_subprocess(work / "home" / "models")
        if cluster is not None:
            cluster.up(workers=2, cores=1, memory="1g", timeout_s=180)
            result["spark_master"] = cluster.url
        master = ["--master", cluster.url] if cluster is not None else []
        for name, cmd, e in (
            ("stream", ["stream", "--web-port", "0", "--metrics-port", "0", "--no-rebuild"], env),
            ("infer", ["infer", "--metrics-port", "0", "--trigger-ms", str(args.trigger_ms),
                       "--stats-jsonl", str(stats_path), *master], infer_env),
        ):
            log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
            procs.append(subprocess.Popen([sys.executable, "-m", "minutecast.cli", *cmd], env=e, cwd=REPO,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

        # Memory: this process is the producer (the Feed); the workers' trees include Spark's JVM and
        # Python workers; Redis reports its own pid; Kafka is whatever listens on the bootstrap port.
        rss.watch("producer", os.getpid(), tree=False)
        rss.watch("faust_worker", procs[0].pid)
        rss.watch("spark_driver_jvm_python_workers", procs[1].pid)
        rss.watch("redis", int(connect(base.redis).info("server")["process_id"]), tree=False)
        rss.watch("kafka", listener_pid(int(base.kafka.bootstrap.split(",")[0].rsplit(":", 1)[1])), tree=False)
        if cluster is not None:  # the executors and their Python workers run under the workers, not the driver
            rss.watch("spark_master", read_pid(cluster.home / "run" / "master.pid"), tree=False)
            for i in range(2):
                rss.watch(f"spark_worker_{i}", read_pid(cluster.home / "run" / f"worker-{i}.pid"))
        if args.timeline_s:
            gauge_client = connect(base.redis)
            rss.gauges["redis_used_memory"] = lambda: gauge_client.info("memory")["used_memory"] / 2**20
        rss.start()
        start = session_start()
        feed = Feed(names, start, base.kafka, topics.bars)
        feed.serve_reports()
        consumer = make_consumer(base.kafka, f"bench-{ns}")
        consumer.subscribe([topics.forecasts])
        # (ticker, as_of) -> the first forecast seen and its Kafka record timestamp (s); forecasts per as_of.
        seen: dict[tuple[str, int], tuple[Forecast, float | None]] = {}
        per_minute: Counter[int] = Counter()

        def drain(until: float) -> None:
            while True:
                left = until - time.monotonic()
                for msg in consumer.consume(2000, timeout=max(0.0, min(left, 0.2))):
                    value = msg.value()
                    if not msg.error() and value is not None:
                        f = Forecast.from_json(value)
                        if (f.ticker, f.as_of) not in seen:
                            kind, ts_ms = msg.timestamp()
                            seen[(f.ticker, f.as_of)] = (f, ts_ms / 1000 if kind else None)
                            per_minute[f.as_of] += 1
                for p in procs:
                    if p.poll() is not None:
                        raise InfraError(f"a pipeline process exited ({p.args!r}); logs in {work}")
                if left <= 0:
                    return

        # Warm-up: 59 minutes of history, then minute 59 completes the first windows (index WINDOW-1).
        t_warm = time.monotonic()
        for i in range(WINDOW):
            feed.minute(i)
        feed.producer.flush(60)
        first = start + 60 * (WINDOW - 1)
        wait_s = 300 + 0.05 * len(names)  # start-up (Spark, TensorFlow) plus 60 minutes of bars through Faust
        deadline = time.monotonic() + wait_s
        while per_minute[first] < len(names):
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"no complete first minute of forecasts in {wait_s:.0f} s; logs in {work}")
            drain(time.monotonic() + 0.5)
        result["warmup_s"] = round(time.monotonic() - t_warm, 1)
        print(f"pipeline warm after {result['warmup_s']} s; timing {minutes} minutes at {rate:.0f} bars/s",
              file=sys.stderr)

        # Timed phase: minute WINDOW .. WINDOW+minutes-1, one burst per accelerated minute.
        t_begin_wall = time.time()
        t_begin = time.monotonic()
        for k in range(minutes):
            feed.minute(WINDOW + k)
            drain(t_begin + (k + 1) * period)
        t_end = time.monotonic()
        feed.producer.flush(60)
        last = start + 60 * (WINDOW + minutes - 1)
        drain_deadline = time.monotonic() + 120
        while per_minute[last] < len(names) and time.monotonic() < drain_deadline:
            drain(time.monotonic() + 0.25)
        drained_s = time.monotonic() - t_end
        drain(time.monotonic() + 1.0)
        feed.stop_reports()

        def stats_lines() -> list[str]:
            return stats_path.read_text().splitlines() if stats_path.exists() else []

        # Spark's listener writes a batch's engine line after the batch: wait a little for the last ones.
        engine_deadline = time.monotonic() + 15
        while (any(b.engine is None for b in stages.parse_batches(json.loads(x) for x in stats_lines() if x.strip()))
               and time.monotonic() < engine_deadline):
            drain(time.monotonic() + 0.5)

        timed = [(f, rec) for (_, a), (f, rec) in seen.items() if a >= start + 60 * WINDOW]
        lat = [f.forecast_at - f.published_at for f, _ in timed if f.published_at is not None]
        # The two halves: producer -> Faust -> Redis -> ready event, and ready event -> Spark -> forecast.
        faust = [f.window_ready_at - f.published_at for f, _ in timed if f.published_at is not None]
        spark = [f.forecast_at - f.window_ready_at for f, _ in timed]
        by_minute: dict[int, list[float]] = {}
        for f, _ in timed:
            if f.published_at is not None:
                by_minute.setdefault((f.as_of - start) // 60, []).append(f.forecast_at - f.published_at)
        order = sorted(by_minute)
        third = max(1, len(order) // 3)
        first_p50 = float(np.median([x for m in order[:third] for x in by_minute[m]])) if order else 0.0
        last_p50 = float(np.median([x for m in order[-third:] for x in by_minute[m]])) if order else 0.0
        batches = stages.parse_batches(json.loads(x) for x in stats_lines() if x.strip())
        timed_batches = [b for b in batches if b.started_at >= t_begin_wall]
        traces = [stages.Trace(f.published_at, feed.delivery(f.ticker, f.as_of), f.window_ready_at, f.forecast_at,
                               rec) for f, rec in timed if f.published_at is not None]
        split = stages.summarize(traces, batches)
        print(f"where the time goes ({len(names)} tickers, {rate:.0f} bars/s, {len(traces)} forecasts):\n"
              + stages.table(split["stages"]), file=sys.stderr)
        superseded = sum(b.superseded for b in timed_batches)
        result |= {
            "p50_ms": _ms(pct(lat, 50)), "p95_ms": _ms(pct(lat, 95)), "p99_ms": _ms(pct(lat, 99)),
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95), "latency_p99_s": pct(lat, 99),
            "latency_max_s": pct(lat, 100),
            "to_window_ready_p50_s": pct(faust, 50), "to_window_ready_p99_s": pct(faust, 99),
            "ready_to_forecast_p50_s": pct(spark, 50), "ready_to_forecast_p99_s": pct(spark, 99),
            "shuffle_by_ticker": base.shuffle_by_ticker and not args.no_shuffle,
            "forecasts": len(timed), "expected": len(names) * minutes, "superseded": int(superseded),
            "bars_per_s": round(len(names) * minutes / (t_end - t_begin)),
            "first_third_p50_s": round(first_p50, 3), "last_third_p50_s": round(last_p50, 3),
            "drain_after_last_minute_s": round(drained_s, 2),
            "backlog_growing": bool(last_p50 > 1.5 * first_p50 + 0.25 or drained_s > 5 * max(period, 1.0)),
            # The trend behind backlog_growing: p50 latency (ms) of each timed minute, in order.
            "p50_ms_by_minute": [round(1000 * float(np.median(by_minute[m]))) for m in order],
            "bars_undelivered": feed.failed,
            **stages.batch_means(timed_batches),
            # Where the time goes: per stage p50/p95/p99 over the timed forecasts (benchmarks.stages).
            "stages": split["stages"], "stages_forecasts_without_batch": split["unmatched"],
            "goal_p99_s": GOAL_P99_S,
        }
        result["goal_met"] = bool(result["latency_p99_s"] is not None and result["latency_p99_s"] < GOAL_P99_S
                                  and not result["backlog_growing"])
        # Redis bytes per ticker at the end of the run (window full at RETAIN bars; history as long as the run)
        result["redis_bytes_per_ticker"] = bytes_per_ticker(connect(base.redis), keys, names)
        consumer.close()
    finally:
        peak = rss.stop()
        result["rss_peak_mb"] = peak  # per service, peak of the process tree's summed RSS during the run
        result["rss_samples"] = rss.samples
        if args.timeline_s:
            result["rss_timeline"] = rss.timeline
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
            try:
                os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group (JVM, Python workers)
            except ProcessLookupError:
                pass
        if cluster is not None:
            cluster.down()
        if not args.keep:
            client = connect(base.redis)
            found = list(client.scan_iter(match=keys.namespace_pattern(), count=1000))
            for i in range(0, len(found), 1000):
                client.delete(*found[i:i + 1000])
            for fut in make_admin(base.kafka).delete_topics([s.name for s in topics.specs()],
                                                            operation_timeout=30).values():
                try:
                    fut.result()
                except Exception:  # noqa: BLE001, S110 - best effort: a leftover uuid topic harms nothing
                    pass
        result["logs"] = str(work)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
