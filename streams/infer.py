"""Spark structured-streaming inference, driver side: window-ready events -> one batched model call per
partition -> forecasts on Kafka and in Redis.

    minutecast infer                       # local[*], trigger every 200 ms, runs until stopped
    minutecast infer --available-now       # process what is on the topic, then exit
    minutecast infer --master spark://host:7077

Per micro-batch (``foreachBatch``), in one Spark job:

1. the window-ready events (JSON parsed with :data:`EVENT_SCHEMA`) are coalesced (or shuffled by ticker)
   into ``InferenceSettings.partitions`` partitions;
2. :func:`streams.partition.infer_partition` (``mapInPandas``, executor side, importable without pyspark)
   keeps the newest event per ticker, reads every window of the partition plus the market ticker's and
   each ticker's online-calibration state in one pipelined round trip, runs the model **once** on the
   whole partition, serves calibrated v2 forecasts (quantiles) and writes Redis in one more round trip
   (idempotent), returning one Kafka row per forecast;
3. the rows go to the forecasts topic (and rejected events to the dead-letter topic) with
   ``df.write.format("kafka")``.

The checkpoint (``InferenceSettings.checkpoint``) makes a restarted job replay an unfinished
micro-batch; the Redis writes are keyed by as-of minute and the Kafka rows are the values Redis kept,
so a replay writes the same values again (Kafka delivery is at least once).

Counting goes through accumulators, never a collect: events, forecasts, supersessions, dead letters,
calibration outcomes, per-phase milliseconds and end-to-end latencies come back to the driver as small
aggregates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from minutecast.kafka import spark_options
from minutecast.keys import Keys
from minutecast.metrics import serve
from minutecast.redis import connect
from minutecast.settings import InferenceSettings
from minutecast.topics import Topics
from streams.partition import COUNTS, PHASES, SERVING_COUNTS, JobConf, infer_partition, warm_partition
from streams.repair import repair_forecasts

__all__ = ["COUNTS", "EVENT_SCHEMA", "OUT_SCHEMA", "PHASES", "SERVING_COUNTS", "BatchStats", "InferenceJob",
           "JobConf", "infer_partition", "warm_partition"]

log = logging.getLogger("minutecast.infer")

# Window-ready JSON as Spark parses it (extra fields such as "time" are ignored).
EVENT_SCHEMA = "v INT, ticker STRING, minute LONG, checksum STRING, published_at DOUBLE, ready_at DOUBLE"
# What infer_partition returns: rows for the Kafka sink (the topic column routes each row).
OUT_SCHEMA = "topic STRING, key STRING, value STRING"


class DictSum(AccumulatorParam):  # type: ignore[type-arg]
    """Accumulator of ``{name: number}`` added key by key."""

    def zero(self, value: dict[str, float]) -> dict[str, float]:
        return {}

    def addInPlace(self, a: dict[str, float], b: dict[str, float]) -> dict[str, float]:  # noqa: N802
        for k, v in b.items():
            a[k] = a.get(k, 0.0) + v
        return a


class ListConcat(AccumulatorParam):  # type: ignore[type-arg]
    """Accumulator of a list (end-to-end latencies of one micro-batch: at most one per ticker)."""

    def zero(self, value: list[float]) -> list[float]:
        return []

    def addInPlace(self, a: list[float], b: list[float]) -> list[float]:  # noqa: N802
        a.extend(b)
        return a


# ---------------------------------------------------------------------------------------------------
# Driver side.


@dataclass
class BatchStats:
    """One micro-batch as the driver saw it (also one JSON line of ``--stats-jsonl``)."""

    batch_id: int
    started_at: float  # epoch s when foreachBatch was called
    duration_ms: float
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

    def __init__(self, spark: Any, settings: InferenceSettings, *, stats_path: Path | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None) -> None:
        self.spark = spark
        self.settings = settings
        self.topics = Topics(settings.namespace)
        self.conf = JobConf(namespace=settings.namespace, models_dir=str(settings.models_dir),
                            history_len=settings.history_len, forecast_ttl_s=settings.forecast_ttl_s,
                            redis=settings.redis,
                            forecasts_topic=self.topics.forecasts, deadletter_topic=self.topics.deadletter,
                            ready_topic=self.topics.ready, market_ticker=settings.market_ticker)
        sc = spark.sparkContext
        self.stats = sc.accumulator({}, DictSum())
        self.latencies = sc.accumulator([], ListConcat())
        self.metrics = _Metrics(settings.metrics_host, settings.metrics_port)
        self.stats_path = stats_path
        self.on_batch = on_batch
        self.progress_client = connect(settings.redis)  # the driver's own (progress records)
        self.redis_run_id: str | None = None  # the Redis process the progress record was last checked against

    def events(self) -> Any:
        """The window-ready stream, parsed (columns: key, value, partition, offset + EVENT_SCHEMA's)."""

        raw = (self.spark.readStream.format("kafka")
               .options(**spark_options(self.settings.kafka))
               .option("subscribe", self.topics.ready)
               .option("startingOffsets", "earliest")  # used only by a new checkpoint
               .option("maxOffsetsPerTrigger", str(self.settings.max_offsets_per_trigger))
               # Expired events (retention) are skipped with Spark's warning instead of stopping the job.
               .option("failOnDataLoss", "false")
               .load())
        value = F.col("value").cast("string")
        return (raw.select(F.col("key").cast("string").alias("key"), value.alias("value"),
                           "partition", "offset", F.from_json(value, EVENT_SCHEMA).alias("e"))
                .select("key", "value", "partition", "offset", "e.v", "e.minute", "e.checksum",
                        "e.published_at", "e.ready_at", F.coalesce("e.ticker", "key").alias("ticker")))

    def process(self, batch: Any, batch_id: int) -> None:
        """``foreachBatch``: one Spark job writing forecasts to Redis (in the tasks) and Kafka."""
        started_at, t0 = time.time(), time.perf_counter()
        # Redis restarted since the last batch (it may have lost the last second of forecast writes)?
        # Then the forecasts published since are written back from Kafka first (streams.repair).
        self.redis_run_id = repair_forecasts(self.progress_client, self.settings.kafka, self.settings.namespace,
                                             self.settings.history_len, self.settings.forecast_ttl_s)
        self.stats.value = {}
        self.latencies.value = []
        fn = partial(infer_partition, self.conf, self.stats, self.latencies)
        if self.settings.shuffle_by_ticker:
            grouped = batch.repartition(self.settings.partitions, "ticker")
        else:
            grouped = batch.coalesce(self.settings.partitions)
        out = grouped.mapInPandas(fn, OUT_SCHEMA)
        out.write.format("kafka").options(**spark_options(self.settings.kafka)).save()
        s = BatchStats(batch_id, started_at, (time.perf_counter() - t0) * 1000, dict(self.stats.value),
                       list(self.latencies.value))
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
        if self.stats_path is not None:
            with self.stats_path.open("a") as fh:
                fh.write(s.to_json() + "\n")
        if self.on_batch is not None:
            self.on_batch(s)

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

    def on_progress(self, batch_id: int, duration_ms: dict[str, int]) -> None:
        """Spark's own split of a finished micro-batch (``addBatch`` is our foreachBatch; the rest is the
        engine: offsets, write-ahead log, planning, commit). Logged and added to ``--stats-jsonl``."""
        if not duration_ms.get("addBatch"):
            return
        log.info("batch %d engine split (ms): %s", batch_id, " ".join(f"{k}={v}" for k, v in duration_ms.items()))
        if self.stats_path is not None:
            with self.stats_path.open("a") as fh:
                fh.write(json.dumps({"progress_batch_id": batch_id, "engine_ms": duration_ms}) + "\n")

    def _listen(self) -> None:
        job = self

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event: Any) -> None:  # noqa: N802
                pass

            def onQueryProgress(self, event: Any) -> None:  # noqa: N802
                p = event.progress
                if p.name == job.query_name:
                    job.on_progress(p.batchId, dict(p.durationMs))
                    source = p.sources[0] if p.sources else None
                    job.publish_progress(p.batchId, source.endOffset if source else None, p.numInputRows,
                                         int(p.durationMs.get("triggerExecution", 0)))

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

    def start(self, *, available_now: bool = False) -> Any:
        """Start the query (checkpoint at ``settings.checkpoint``); returns the StreamingQuery."""
        self.settings.checkpoint.mkdir(parents=True, exist_ok=True)
        self.warm_up()
        self._listen()
        writer = (self.events().writeStream.queryName(self.query_name)
                  .foreachBatch(self.process)
                  .option("checkpointLocation", str(self.settings.checkpoint)))
        if available_now:
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=f"{self.settings.trigger_ms} milliseconds")
        return writer.start()
