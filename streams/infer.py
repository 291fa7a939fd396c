"""Spark structured-streaming inference, driver side: window-ready events -> one batched model call per
partition -> forecasts on Kafka and in Redis.

    minutecast infer                       # local[*], trigger every 100 ms, runs until stopped
    minutecast infer --available-now       # process what is on the topic, then exit
    minutecast infer --master spark://host:7077

One plain streaming plan, no ``foreachBatch``: ``readStream`` (Kafka) -> JSON parsed with
:data:`EVENT_SCHEMA` -> coalesced (or shuffled by ticker) into ``InferenceSettings.partitions`` partitions
-> ``mapInPandas`` (:func:`streams.partition.infer_partition`, executor side, importable without pyspark:
newest event per ticker, every window of the partition plus the market ticker's and each ticker's
online-calibration state in one pipelined round trip, the model **once** on the whole partition,
calibrated v2 forecasts, Redis written in one more round trip, idempotently) -> ``writeStream`` to Kafka
(the ``topic`` column routes forecasts and dead letters). Each micro-batch is the engine's own job (with
``foreachBatch`` the driver's Python was called back through Py4J and planned and ran a second job per
batch), and with ``async_progress`` the offset and commit logs are written off the batch's critical path
(Spark's asynchronous progress tracking: Kafka sink, stateless plan, processing-time trigger).

The checkpoint (``InferenceSettings.checkpoint``) makes a restarted job replay what it had not
committed; the Redis writes are keyed by as-of minute (first value wins) and the Kafka rows are the
values Redis kept, so a replay writes the same values again (Kafka delivery is at least once). With
asynchronous progress tracking a replayed range may be planned anew (batch boundaries can move), which
changes nothing for the same reason.

Everything per batch on the driver runs in the query listener, after the batch: the counts come back
through accumulators keyed by batch id (never a collect: events, forecasts, supersessions, dead letters,
calibration outcomes, per-phase milliseconds, end-to-end latencies), then metrics, the ``--stats-jsonl``
line, the Redis-restart check (:func:`streams.repair.repair_forecasts`, also once before the query
starts) and the progress record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pyspark import TaskContext
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from minutecast.kafka import spark_options
from minutecast.keys import Keys
from minutecast.metrics import serve
from minutecast.redis import connect
from minutecast.settings import InferenceSettings
from minutecast.topics import Topics
from streams.partition import COUNTS, PHASES, PRE_BATCH, SERVING_COUNTS, JobConf, infer_partition, warm_partition
from streams.repair import repair_forecasts

__all__ = ["COUNTS", "EVENT_SCHEMA", "OUT_SCHEMA", "PHASES", "SERVING_COUNTS", "BatchStats", "InferenceJob",
           "JobConf", "infer_partition", "tagged_partition", "warm_partition"]

log = logging.getLogger("minutecast.infer")

# Window-ready JSON as Spark parses it (extra fields such as "time" are ignored).
EVENT_SCHEMA = "v INT, ticker STRING, minute LONG, checksum STRING, published_at DOUBLE, ready_at DOUBLE"
# What infer_partition returns: rows for the Kafka sink (the topic column routes each row).
OUT_SCHEMA = "topic STRING, key STRING, value STRING"


# Spark's local property naming the micro-batch a task belongs to (MicroBatchExecution.BATCH_ID_KEY).
BATCH_ID_KEY = "streaming.sql.batchId"
# The accumulators are merged on the driver by PySpark's accumulator server thread while the listener
# thread takes a finished batch's entry out: one lock for both (on executors it guards nothing).
_ACC_LOCK = threading.Lock()


class BatchDictSum(AccumulatorParam):  # type: ignore[type-arg]
    """Accumulator of ``{batch_id: {name: number}}`` added key by key: batches may overlap in time
    (the listener reads batch N while batch N+1's tasks report), so each batch keeps its own counts."""

    def zero(self, value: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
        return {}

    def addInPlace(self, a: dict[int, dict[str, float]],  # noqa: N802
                   b: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
        with _ACC_LOCK:
            for batch, counts in b.items():
                mine = a.setdefault(batch, {})
                for k, v in counts.items():
                    mine[k] = mine.get(k, 0.0) + v
        return a


class BatchListConcat(AccumulatorParam):  # type: ignore[type-arg]
    """Accumulator of ``{batch_id: [end-to-end latency s]}`` (at most one per ticker and batch)."""

    def zero(self, value: dict[int, list[float]]) -> dict[int, list[float]]:
        return {}

    def addInPlace(self, a: dict[int, list[float]], b: dict[int, list[float]]) -> dict[int, list[float]]:  # noqa: N802
        with _ACC_LOCK:
            for batch, xs in b.items():
                a.setdefault(batch, []).extend(xs)
        return a


def take(acc: Any, batch_id: int, empty: Any) -> Any:
    """Remove and return one batch's entry of a driver-side accumulator (``empty`` if none came)."""
    with _ACC_LOCK:
        return acc._value.pop(batch_id, empty)  # noqa: SLF001 - the driver's merged value, in place


class _Tagged:
    """What :func:`infer_partition` adds to (``add``), forwarded to an accumulator under the batch id."""

    def __init__(self, acc: Any, batch_id: int) -> None:
        self.acc, self.batch_id = acc, batch_id

    def add(self, value: Any) -> None:
        self.acc.add({self.batch_id: value})


def tagged_partition(conf: JobConf, stats: Any, latencies: Any,
                     batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: :func:`infer_partition` with its counts filed under the task's micro-batch."""
    ctx = TaskContext.get()
    batch = int((ctx.getLocalProperty(BATCH_ID_KEY) if ctx is not None else None) or -1)
    yield from infer_partition(conf, _Tagged(stats, batch), _Tagged(latencies, batch), batches)


# ---------------------------------------------------------------------------------------------------
# Driver side.


@dataclass
class BatchStats:
    """One micro-batch as the driver saw it (also one JSON line of ``--stats-jsonl``)."""

    batch_id: int
    started_at: float  # epoch s when the batch's job started (trigger time + the engine's work before it)
    duration_ms: float  # the batch's job (Spark's addBatch: read, infer, Redis, Kafka write)
    counts: dict[str, float]
    latencies: list[float]

    def to_json(self) -> str:
        lat = np.asarray(self.latencies)
        d: dict[str, Any] = {"batch_id": self.batch_id, "started_at": self.started_at,
                             "duration_ms": round(self.duration_ms, 1), **dict(self.counts.items())}
        if lat.size:
            d |= {"latency_p50_s": float(np.percentile(lat, 50)), "latency_max_s": float(lat.max())}
        return json.dumps(d)


class _Metrics:
    """Prometheus metrics of the driver (own registry: several jobs may live in one test process)."""

    def __init__(self, host: str, port: int) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batch = Histogram("minutecast_infer_batch_seconds", "micro-batch duration", registry=r,
                               buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
        self.phase = Counter("minutecast_infer_phase_seconds", "time in each phase, summed over partitions",
                             ["phase"], registry=r)
        self.events = Counter("minutecast_infer_events", "window-ready events by outcome", ["outcome"], registry=r)
        self.forecasts = Counter("minutecast_infer_forecasts", "forecasts written (new, not replays)", registry=r)
        self.serving = Counter("minutecast_infer_serving", "calibration outcomes applied, Redis round trips",
                               ["what"], registry=r)
        self.model = Gauge("minutecast_infer_model_info", "1 for the model version served last",
                           ["version"], registry=r)
        self.latency = Histogram("minutecast_infer_e2e_latency_seconds", "forecast_at - bar published_at",
                                 registry=r, buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60))
        self.last_version: str | None = None
        serve(host, port, r)

    def observe(self, s: BatchStats) -> None:
        self.batch.observe(s.duration_ms / 1000)
        for p in PHASES:
            self.phase.labels(p.removesuffix("_ms")).inc(s.counts.get(p, 0.0) / 1000)
        for c in COUNTS:
            if c not in ("events", "forecasts"):
                self.events.labels(c).inc(s.counts.get(c, 0.0))
        self.forecasts.inc(s.counts.get("forecasts", 0.0))
        for c in SERVING_COUNTS:
            self.serving.labels(c).inc(s.counts.get(c, 0.0))
        for x in s.latencies:
            self.latency.observe(x)
        versions = [k.removeprefix("model:") for k in s.counts if k.startswith("model:")]
        if versions:
            version = max(versions, key=lambda v: s.counts[f"model:{v}"])
            if version != self.last_version:
                if self.last_version is not None:
                    self.model.remove(self.last_version)
                self.model.labels(version).set(1)
                self.last_version = version


class InferenceJob:
    """The streaming query: build with a SparkSession, :meth:`start`, then ``awaitTermination``."""

    def __init__(self, spark: Any, settings: InferenceSettings, *, stats_path: Path | None = None) -> None:
        self.spark = spark
        self.settings = settings
        self.topics = Topics(settings.namespace)
        self.conf = JobConf(namespace=settings.namespace, models_dir=str(settings.models_dir),
                            history_len=settings.history_len, forecast_ttl_s=settings.forecast_ttl_s,
                            redis=settings.redis,
                            forecasts_topic=self.topics.forecasts, deadletter_topic=self.topics.deadletter,
                            ready_topic=self.topics.ready, market_ticker=settings.market_ticker)
        sc = spark.sparkContext
        self.stats = sc.accumulator({}, BatchDictSum())
        self.latencies = sc.accumulator({}, BatchListConcat())
        self.metrics = _Metrics(settings.metrics_host, settings.metrics_port)
        self.stats_path = stats_path
        self.progress_client = connect(settings.redis)  # the driver's own (progress records, the restart check)
        self.redis_run_id: str | None = None  # the Redis process the progress record was last checked against

    def events(self) -> Any:
        """The window-ready stream, parsed (columns: key, value, partition, offset + EVENT_SCHEMA's)."""

        raw = (self.spark.readStream.format("kafka")
               .options(**spark_options(self.settings.kafka))
               .option("subscribe", self.topics.ready)
               .option("startingOffsets", "earliest")  # used only by a new checkpoint
               .option("maxOffsetsPerTrigger", str(self.settings.max_offsets_per_trigger))
               .option("kafka.fetch.max.wait.ms", str(self.settings.source_fetch_wait_ms))
               # Expired events (retention) are skipped with Spark's warning instead of stopping the job.
               .option("failOnDataLoss", "false")
               .load())
        value = F.col("value").cast("string")
        return (raw.select(F.col("key").cast("string").alias("key"), value.alias("value"),
                           "partition", "offset", F.from_json(value, EVENT_SCHEMA).alias("e"))
                .select("key", "value", "partition", "offset", "e.v", "e.minute", "e.checksum",
                        "e.published_at", "e.ready_at", F.coalesce("e.ticker", "key").alias("ticker")))

    def forecasts(self) -> Any:
        """The whole plan up to the sink: events -> partitions -> :func:`tagged_partition` rows."""
        fn = partial(tagged_partition, self.conf, self.stats, self.latencies)
        events = self.events()
        if self.settings.shuffle_by_ticker:
            grouped = events.repartition(self.settings.partitions, "ticker")
        else:
            grouped = events.coalesce(self.settings.partitions)
        return grouped.mapInPandas(fn, OUT_SCHEMA)

    def check_redis(self) -> None:
        """Redis restarted since the last batch (it may have lost the last second of forecast writes)?
        Then the forecasts published since are written back from Kafka (streams.repair); a failure is
        logged and retried after the next batch."""
        try:
            self.redis_run_id = repair_forecasts(self.progress_client, self.settings.kafka, self.settings.namespace,
                                                 self.settings.history_len, self.settings.forecast_ttl_s)
        except Exception as exc:  # noqa: BLE001 - Redis or Kafka down: the progress record shows it stale
            log.warning("could not check Redis for a restart: %s", exc)

    def batch_done(self, batch_id: int, trigger_at: float, engine_ms: dict[str, int]) -> None:
        """A finished micro-batch (from the listener): its counts out of the accumulators -> metrics, the
        log line, ``--stats-jsonl``. ``trigger_at``: epoch s of the trigger; ``engine_ms``: durationMs."""
        started_at = trigger_at + sum(engine_ms.get(p, 0) for p in PRE_BATCH) / 1000
        s = BatchStats(batch_id, started_at, float(engine_ms.get("addBatch", 0)), take(self.stats, batch_id, {}),
                       take(self.latencies, batch_id, []))
        self.metrics.observe(s)
        c = s.counts
        if c.get("events"):
            log.info("batch %d: %d events -> %d forecasts (+%d corrections, +%d replayed; superseded %d in batch, "
                     "%d by state; "
                     "%d dead; %d calibration outcomes) in %.0f ms: redis read %.0f, windows %.0f, model load %.0f, "
                     "model %.0f, writes %.0f ms (summed over partitions) %s", batch_id, c.get("events", 0),
                     c.get("forecasts", 0), c.get("corrections", 0), c.get("replayed", 0), c.get("superseded_batch", 0),
                     c.get("superseded_state", 0), c.get("dead_letter", 0), c.get("outcomes", 0), s.duration_ms,
                     c.get("redis_read_ms", 0), c.get("build_ms", 0),
                     c.get("model_load_ms", 0), c.get("model_ms", 0), c.get("write_ms", 0),
                     " ".join(k for k in c if k.startswith("model:")))
            log.info("batch %d engine split (ms): %s", batch_id, " ".join(f"{k}={v}" for k, v in engine_ms.items()))
        if self.stats_path is not None:
            with self.stats_path.open("a") as fh:
                fh.write(s.to_json() + "\n")
                fh.write(json.dumps({"progress_batch_id": batch_id, "engine_ms": engine_ms}) + "\n")

    def publish_progress(self, batch_id: int, end_offsets: str | None, rows: int, duration_ms: int) -> None:
        """The job's own progress record (``Keys.infer_progress``) for ``minutecast status``: the newest
        finished micro-batch and how far into the window-ready topic it got (Spark commits no group offsets).
        ``end_offsets``: the Kafka source's ``endOffset`` JSON ({topic: {partition: next offset}})."""
        ready = (json.loads(end_offsets) if end_offsets else {}).get(self.topics.ready, {})
        try:
            self.progress_client.hset(Keys(self.settings.namespace).infer_progress(), mapping={
                "batch_id": batch_id, "at": time.time(), "ready_offsets": json.dumps(ready), "rows": rows,
                "duration_ms": duration_ms, **({"redis_run_id": self.redis_run_id} if self.redis_run_id else {})})
        except Exception as exc:  # noqa: BLE001 - progress is advisory: Redis down shows as a stale record
            log.warning("could not publish progress of batch %d: %s", batch_id, exc)

    def on_progress(self, p: Any) -> None:
        """Spark's progress event of a finished micro-batch (the listener thread, after the batch)."""
        engine_ms = {k: int(v) for k, v in dict(p.durationMs).items()}
        trigger_at = trigger_time(p)
        try:
            if "addBatch" in engine_ms:  # a batch ran (a no-data progress event carries no job)
                self.batch_done(p.batchId, trigger_at, engine_ms)
        finally:
            self.check_redis()
            source = p.sources[0] if p.sources else None
            self.publish_progress(p.batchId, source.endOffset if source else None, p.numInputRows,
                                  engine_ms.get("triggerExecution", 0))

    def listen(self, on_progress: Callable[[Any], None]) -> None:
        """Call ``on_progress(progress)`` (Spark's ``StreamingQueryProgress``) after each micro-batch of this
        job's query, on Spark's listener thread."""
        name = self.query_name

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event: Any) -> None:  # noqa: N802
                pass

            def onQueryProgress(self, event: Any) -> None:  # noqa: N802
                if event.progress.name == name:
                    on_progress(event.progress)

            def onQueryIdle(self, event: Any) -> None:  # noqa: N802
                pass

            def onQueryTerminated(self, event: Any) -> None:  # noqa: N802
                pass

        self.spark.streams.addListener(_Listener())

    @property
    def query_name(self) -> str:
        return f"minutecast-infer-{self.settings.namespace}"

    def warm_up(self) -> None:
        """Load the promoted model in the Python workers before the first micro-batch (one task per
        partition; TensorFlow's first import costs seconds and would otherwise land on live events)."""
        t0 = time.perf_counter()
        n = self.settings.partitions
        (self.spark.range(n, numPartitions=n).mapInPandas(partial(warm_partition, self.conf), "version STRING")
         .write.format("noop").mode("overwrite").save())
        log.info("workers warmed up in %.1f s", time.perf_counter() - t0)

    def writer(self, plan: Any, *, available_now: bool = False) -> Any:
        """The query's sink and trigger for ``plan`` (a DataStreamWriter, not started): the Kafka sink, the
        checkpoint, asynchronous progress tracking, the trigger. ``benchmarks.spark_floor`` starts its no-work
        plan with it, so the floor it measures is this query's."""
        writer = (plan.writeStream.queryName(self.query_name).format("kafka")
                  .options(**spark_options(self.settings.kafka))
                  .option("checkpointLocation", str(self.settings.checkpoint)))
        if available_now:  # Spark's asynchronous progress tracking takes processing-time triggers only
            return writer.trigger(availableNow=True)
        if self.settings.async_progress:
            # Interval 0: every batch's offsets and commit are still written (off the critical path), so the
            # checkpoint stays complete and a run without it (--available-now) can follow on the same one.
            writer = (writer.option("asyncProgressTrackingEnabled", "true")
                      .option("asyncProgressTrackingCheckpointIntervalMs", "0"))
        return writer.trigger(processingTime=f"{self.settings.trigger_ms} milliseconds")

    def start(self, *, available_now: bool = False) -> Any:
        """Start the query (checkpoint at ``settings.checkpoint``); returns the StreamingQuery."""
        self.settings.checkpoint.mkdir(parents=True, exist_ok=True)
        self.warm_up()
        self.check_redis()  # before the first batch writes anything
        self.listen(self.on_progress)
        return self.writer(self.forecasts(), available_now=available_now).start()


def trigger_time(progress: Any) -> float:
    """A StreamingQueryProgress's trigger start (its ISO-8601 UTC ``timestamp``) as epoch seconds."""
    return datetime.fromisoformat(str(progress.timestamp).replace("Z", "+00:00")).timestamp()
