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
accelerated minute, each minute as one burst like a live feed at the minute boundary: first ``--warm-bursts``
untimed ones (a fresh JVM's first batches run interpreted; reported apart), then the timed ones. Each burst
starts at a random phase within one trigger interval of its slot, as a live feed's would.

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
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import stages
from benchmarks.e2e_pipeline import Feed, Pipeline, session_start, start, stop, watch_memory
from benchmarks.redis_memory import bytes_per_ticker
from benchmarks.rss import RssSampler
from benchmarks.state import tickers
from infra.spark_cluster import Cluster
from minutecast.errors import InfraError, ServiceUnavailable
from minutecast.kafka import make_consumer
from minutecast.redis import connect
from minutecast.schemas import Forecast
from minutecast.settings import InferenceSettings
from minutecast.window import WINDOW
from web.server import free_port

GOAL_P99_S = 1.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="25 timed minutes instead of 90")
    ap.add_argument("--minutes", type=int, help="timed accelerated minutes")
    ap.add_argument("--warm-bursts", type=int, default=5,
                    help="untimed bursts at the timed pace after the first forecasts (the JVM's JIT and the "
                         "Python workers warm up; their latencies are reported apart as warm_up_p50_ms_by_minute)")
    ap.add_argument("--tickers", type=int, default=503,
                    help="any number: the S&P 500 names, then generated ones (S00000 ...) beyond 503")
    ap.add_argument("--minute-s", type=float, default=10.0,
                    help="seconds between two minutes' bursts (10: the real shape; 1: the 60x stress)")
    ap.add_argument("--bars-per-s", type=float, help="publish pace in bars/s (overrides --minute-s)")
    ap.add_argument("--trigger-ms", type=int, default=InferenceSettings.model_fields["trigger_ms"].default,
                    help="the Spark job's trigger interval (default: the job's own, MINUTECAST_TRIGGER_MS)")
    ap.add_argument("--persistence", action="store_true", help="no model: serve the persistence baseline")
    ap.add_argument("--no-shuffle", action="store_true",
                    help="coalesce Kafka partitions instead of shuffling by ticker (MINUTECAST_SHUFFLE_BY_TICKER)")
    ap.add_argument("--partitions", type=int, help="partitions per micro-batch (default: settings)")
    ap.add_argument("--keep", action="store_true", help="keep the namespace, logs and stats afterwards")
    ap.add_argument("--standalone", action="store_true", help="the Spark job on a private master + 2 workers")
    ap.add_argument("--timeline-s", type=float, help="record RSS per service and Redis used_memory every S s "
                    "(``rss_timeline`` in the JSON; benchmarks.soak)")
    return ap.parse_args(argv)


@dataclass(frozen=True)
class Pace:
    """Who publishes how fast: the tickers, the timed minutes, bars/s and the seconds per accelerated minute."""

    names: list[str]
    minutes: int
    rate: float
    period: float
    warm_bursts: int  # untimed bursts at this pace before the timed ones
    # Each burst starts up to this long (s, uniform) after its slot: Spark's processing-time trigger ticks on
    # whole multiples of its interval since the epoch, and bursts every whole 10 s would meet every tick at
    # the same phase, so one run's "wait for the next trigger" would be a constant drawn once (39.7 and 77.9
    # ms p50 in two runs). A live feed's bars come whenever Yahoo answers: a random phase, as here.
    phase_s: float
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Pace:
        names = tickers(args.tickers)
        rate = args.bars_per_s or len(names) / args.minute_s
        return cls(names, args.minutes or (25 if args.quick else 90), rate, len(names) / rate, args.warm_bursts,
                   args.trigger_ms / 1000)

    def bursts(self, feed: Feed, reader: Forecasts, first: int, n: int) -> None:
        """Publish minutes first .. first+n-1, one burst per period (each at a random phase), reading
        forecasts in between and until the last period is over."""
        begin = time.monotonic()
        for k in range(n):
            reader.drain(begin + k * self.period + self.rng.uniform(0, self.phase_s))
            feed.minute(first + k)
        reader.drain(begin + n * self.period)

    @property
    def first_timed(self) -> int:
        """Index of the first timed minute: after the WINDOW minutes of history and the warm-up bursts."""
        return WINDOW + self.warm_bursts


def plan(args: argparse.Namespace) -> Pipeline:
    """A fresh uuid namespace with a private work folder, and the environments of the Faust worker and the Spark
    job (the ticker allowlist off: generated names; the job's own registry and checkpoint)."""
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
    cluster = Cluster(work / "spark-cluster", port=free_port(), ui_port=free_port()) if args.standalone else None
    return Pipeline(ns, work, base, env, infer_env, cluster)


def header(args: argparse.Namespace, pace: Pace, ns: str) -> dict[str, Any]:
    """The run's description, the first keys of the JSON."""
    n, period = len(pace.names), pace.period
    return {"benchmark": "e2e", "quick": args.quick, "namespace": ns, "tickers": n,
            "timed_minutes": pace.minutes, "target_bars_per_s": pace.rate, "standalone": args.standalone,
            "minute_s": round(period, 3), "trigger_ms": args.trigger_ms, "warm_up_bursts": pace.warm_bursts,
            "burst_phase_ms": round(1000 * pace.phase_s),
            "pace": f"a burst of {n} bars every {period:g} s"
            + (" (the real shape, 6x)" if period >= 10 else f" ({60 / period:g}x stress)")
            + (f", after {pace.warm_bursts} untimed warm-up bursts" if pace.warm_bursts else "")}


class Forecasts:
    """The forecasts topic read from its start: the first forecast of each (ticker, as_of) with its Kafka record
    timestamp (s), and forecasts per as_of; while reading, a pipeline process that exits fails the run."""

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe
        self.consumer = make_consumer(pipe.base.kafka, f"bench-{pipe.ns}")
        self.consumer.subscribe([pipe.topics.forecasts])
        self.seen: dict[tuple[str, int], tuple[Forecast, float | None]] = {}
        self.per_minute: Counter[int] = Counter()

    def drain(self, until: float) -> None:
        """Read until ``until`` (monotonic s)."""
        while True:
            left = until - time.monotonic()
            for msg in self.consumer.consume(2000, timeout=max(0.0, min(left, 0.2))):
                value = msg.value()
                if not msg.error() and value is not None:
                    f = Forecast.from_json(value)
                    if (f.ticker, f.as_of) not in self.seen:
                        kind, ts_ms = msg.timestamp()
                        self.seen[(f.ticker, f.as_of)] = (f, ts_ms / 1000 if kind else None)
                        self.per_minute[f.as_of] += 1
            for p in self.pipe.procs:
                if p.poll() is not None:
                    raise InfraError(f"a pipeline process exited ({p.args!r}); logs in {self.pipe.work}")
            if left <= 0:
                return


def warm_up(feed: Feed, reader: Forecasts, pace: Pace, result: dict[str, Any]) -> None:
    """59 minutes of history, then minute 59 completes the first windows (index WINDOW-1); wait until every ticker
    has its first forecast (Spark start, TensorFlow load); then ``pace.warm_bursts`` bursts at the timed pace,
    untimed: a fresh JVM runs the first micro-batches interpreted (measured, 503 tickers: the first timed
    minute's p50 was 669 and 1,089 ms in two runs against ~300-400 for the later ones)."""
    n = len(pace.names)
    t_warm = time.monotonic()
    for i in range(WINDOW):
        feed.minute(i)
    feed.producer.flush(60)
    first = feed.start + 60 * (WINDOW - 1)
    wait_s = 300 + 0.05 * n  # start-up (Spark, TensorFlow) plus 60 minutes of bars through Faust
    deadline = time.monotonic() + wait_s
    while reader.per_minute[first] < n:
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"no complete first minute of forecasts in {wait_s:.0f} s; "
                                     f"logs in {reader.pipe.work}")
        reader.drain(time.monotonic() + 0.5)
    pace.bursts(feed, reader, WINDOW, pace.warm_bursts)
    result["warmup_s"] = round(time.monotonic() - t_warm, 1)
    print(f"pipeline warm after {result['warmup_s']} s; timing {pace.minutes} minutes at {pace.rate:.0f} bars/s",
          file=sys.stderr)


@dataclass(frozen=True)
class Timing:
    begin_wall: float  # epoch s: batches started from then on are the timed ones
    begin: float  # monotonic s, first timed burst
    end: float  # monotonic s, after the last timed burst's reading time
    drained_s: float  # from then until the last minute's forecasts were all in (at most 120 s)


def timed_phase(feed: Feed, reader: Forecasts, pace: Pace) -> Timing:
    """Minutes first_timed .. first_timed+minutes-1, one burst per accelerated minute, then drain the last minute's
    forecasts and the job's last per-batch stats."""
    begin_wall, begin = time.time(), time.monotonic()
    pace.bursts(feed, reader, pace.first_timed, pace.minutes)
    end = time.monotonic()
    feed.producer.flush(60)
    last = feed.start + 60 * (pace.first_timed + pace.minutes - 1)
    drain_deadline = time.monotonic() + 120
    while reader.per_minute[last] < len(pace.names) and time.monotonic() < drain_deadline:
        reader.drain(time.monotonic() + 0.25)
    drained_s = time.monotonic() - end
    reader.drain(time.monotonic() + 1.0)
    feed.stop_reports()
    # Spark's listener writes a batch's engine line after the batch: wait a little for the last ones.
    engine_deadline = time.monotonic() + 15
    while any(b.engine is None for b in batches(reader.pipe)) and time.monotonic() < engine_deadline:
        reader.drain(time.monotonic() + 0.5)
    return Timing(begin_wall, begin, end, drained_s)


def batches(pipe: Pipeline) -> list[stages.Batch]:
    """The Spark job's per-batch stats so far."""
    lines = pipe.stats_path.read_text().splitlines() if pipe.stats_path.exists() else []
    return stages.parse_batches(json.loads(x) for x in lines if x.strip())


def pct(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def latency(timed: list[tuple[Forecast, float | None]]) -> dict[str, Any]:
    """Percentiles of publish -> forecast over the timed forecasts, and of its two halves: producer -> Faust ->
    Redis -> ready event, and ready event -> Spark -> forecast."""
    lat = [f.forecast_at - f.published_at for f, _ in timed if f.published_at is not None]
    faust = [f.window_ready_at - f.published_at for f, _ in timed if f.published_at is not None]
    spark = [f.forecast_at - f.window_ready_at for f, _ in timed]
    return {"p50_ms": _ms(pct(lat, 50)), "p95_ms": _ms(pct(lat, 95)), "p99_ms": _ms(pct(lat, 99)),
            "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95), "latency_p99_s": pct(lat, 99),
            "latency_max_s": pct(lat, 100),
            "to_window_ready_p50_s": pct(faust, 50), "to_window_ready_p99_s": pct(faust, 99),
            "ready_to_forecast_p50_s": pct(spark, 50), "ready_to_forecast_p99_s": pct(spark, 99)}


def by_minute(timed: list[tuple[Forecast, float | None]], start: int) -> dict[int, list[float]]:
    """Minute index -> the latencies (s) of its forecasts."""
    out: dict[int, list[float]] = {}
    for f, _ in timed:
        if f.published_at is not None:
            out.setdefault((f.as_of - start) // 60, []).append(f.forecast_at - f.published_at)
    return out


def p50_ms_by_minute(by_minute: dict[int, list[float]]) -> list[int]:
    """The p50 latency (ms) of each minute of :func:`by_minute`, in minute order."""
    return [round(1000 * float(np.median(by_minute[m]))) for m in sorted(by_minute)]


def backlog(by_minute: dict[int, list[float]], drained_s: float, period: float) -> dict[str, Any]:
    """Whether a backlog grows: the last third of the minutes clearly slower than the first, or a long drain."""
    order = sorted(by_minute)
    third = max(1, len(order) // 3)
    first_p50 = float(np.median([x for m in order[:third] for x in by_minute[m]])) if order else 0.0
    last_p50 = float(np.median([x for m in order[-third:] for x in by_minute[m]])) if order else 0.0
    return {"first_third_p50_s": round(first_p50, 3), "last_third_p50_s": round(last_p50, 3),
            "drain_after_last_minute_s": round(drained_s, 2),
            "backlog_growing": bool(last_p50 > 1.5 * first_p50 + 0.25 or drained_s > 5 * max(period, 1.0)),
            # The trend behind backlog_growing: p50 latency (ms) of each timed minute, in order.
            "p50_ms_by_minute": p50_ms_by_minute(by_minute)}


def measure(args: argparse.Namespace, pace: Pace, feed: Feed, reader: Forecasts, t: Timing) -> dict[str, Any]:
    """The timed forecasts' figures, in the JSON's order: latency, throughput, backlog, the batch split, where the
    time goes per stage (also a table on stderr), the goal, Redis bytes per ticker."""
    pipe, n = reader.pipe, len(pace.names)
    timed = [(f, rec) for (_, a), (f, rec) in reader.seen.items() if a >= feed.start + 60 * pace.first_timed]
    warm = [(f, rec) for (_, a), (f, rec) in reader.seen.items()
            if feed.start + 60 * WINDOW <= a < feed.start + 60 * pace.first_timed]
    all_batches = batches(pipe)
    timed_batches = [b for b in all_batches if b.started_at >= t.begin_wall]
    traces = [stages.Trace(f.published_at, feed.delivery(f.ticker, f.as_of), f.window_ready_at, f.forecast_at,
                           rec) for f, rec in timed if f.published_at is not None]
    split = stages.summarize(traces, all_batches)
    print(f"where the time goes ({n} tickers, {pace.rate:.0f} bars/s, {len(traces)} forecasts):\n"
          + stages.table(split["stages"]), file=sys.stderr)
    out = latency(timed) | {
        "shuffle_by_ticker": pipe.base.shuffle_by_ticker and not args.no_shuffle,
        "forecasts": len(timed), "expected": n * pace.minutes,
        "superseded": int(sum(b.superseded for b in timed_batches)),
        "bars_per_s": round(n * pace.minutes / (t.end - t.begin)),
        **backlog(by_minute(timed, feed.start), t.drained_s, pace.period),
        # the untimed warm-up bursts' p50 latency (ms) each, in order: what the first minutes after a start cost
        "warm_up_p50_ms_by_minute": p50_ms_by_minute(by_minute(warm, feed.start)),
        "bars_undelivered": feed.failed,
        **stages.batch_means(timed_batches),
        # Where the time goes: per stage p50/p95/p99 over the timed forecasts (benchmarks.stages).
        "stages": split["stages"], "stages_forecasts_without_batch": split["unmatched"],
        "goal_p99_s": GOAL_P99_S,
    }
    out["goal_met"] = bool(out["latency_p99_s"] is not None and out["latency_p99_s"] < GOAL_P99_S
                           and not out["backlog_growing"])
    # Redis bytes per ticker at the end of the run (window full at RETAIN bars; history as long as the run)
    out["redis_bytes_per_ticker"] = bytes_per_ticker(connect(pipe.base.redis), pipe.keys, pace.names)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pace = Pace.of(args)
    pipe = plan(args)
    result = header(args, pace, pipe.ns)
    rss = RssSampler(timeline_s=args.timeline_s)
    try:
        start(pipe, args.trigger_ms, args.persistence, result)
        watch_memory(pipe, rss, bool(args.timeline_s))
        feed = Feed(pace.names, session_start(), pipe.base.kafka, pipe.topics.bars)
        feed.serve_reports()
        reader = Forecasts(pipe)
        warm_up(feed, reader, pace, result)
        timing = timed_phase(feed, reader, pace)
        result |= measure(args, pace, feed, reader, timing)
        reader.consumer.close()
    finally:
        result["rss_peak_mb"] = rss.stop()  # per service, peak of the process tree's summed RSS during the run
        result["rss_samples"] = rss.samples
        if args.timeline_s:
            result["rss_timeline"] = rss.timeline
        stop(pipe, args.keep)
        result["logs"] = str(pipe.work)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
