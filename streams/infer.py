"""Spark structured-streaming inference: window-ready events -> one batched model call per partition ->
forecasts on Kafka and in Redis.

    minutecast infer                       # local[*], trigger every 200 ms, runs until stopped
    minutecast infer --available-now       # process what is on the topic, then exit
    minutecast infer --master spark://host:7077

Per micro-batch (``foreachBatch``), in one Spark job:

1. the window-ready events (JSON parsed with :data:`EVENT_SCHEMA`) are shuffled by ticker into
   ``InferenceSettings.partitions`` partitions;
2. :func:`infer_partition` (``mapInPandas``) keeps the newest event per ticker (older ones in the same
   batch are *superseded* by design and counted), fetches every window of the partition from Redis in
   one pipelined round trip (``streams.state.read_windows``), builds the windows with the shared
   window policy, runs the model **once** on the whole partition, writes Redis with one pipeline of a
   Lua script (idempotent; see :data:`WRITE_LUA`) and returns one Kafka row per forecast;
3. the rows go to the forecasts topic (and rejected events to the dead-letter topic) with
   ``df.write.format("kafka")``.

The checkpoint (``InferenceSettings.checkpoint``) makes a restarted job replay an unfinished
micro-batch; the Redis writes are keyed by as-of minute and the Kafka rows are the values Redis kept,
so a replay writes the same values again (Kafka delivery is at least once).

Counting goes through accumulators, never a collect: events, forecasts, supersessions, dead letters,
per-phase milliseconds and end-to-end latencies come back to the driver as small aggregates.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.accumulators import AccumulatorParam

from minutecast.errors import ValidationError
from minutecast.keys import Keys
from minutecast.registry import PERSISTENCE
from minutecast.schemas import READY_VERSION, TICKER_RE, DeadLetter, Forecast, WindowReady
from minutecast.settings import InferenceSettings, RedisSettings
from minutecast.window import HORIZON, checksum
from streams.state import WindowRow, read_windows, window_for

log = logging.getLogger("minutecast.infer")

# Window-ready JSON as Spark parses it (extra fields such as "time" are ignored).
EVENT_SCHEMA = "v INT, ticker STRING, minute LONG, checksum STRING, published_at DOUBLE, ready_at DOUBLE"
# What infer_partition returns: rows for the Kafka sink (the topic column routes each row).
OUT_SCHEMA = "topic STRING, key STRING, value STRING"

# KEYS[1] latest forecast hash, KEYS[2] history hash.
# ARGV[1] as-of minute (epoch s), ARGV[2] Forecast JSON, ARGV[3] history length, ARGV[4..] field/value
# pairs of the latest hash. History is write-once per as-of (HSETNX): a replay keeps the first value and
# gets it back, so what goes to Kafka is what Redis holds. The latest hash only moves forward in as_of.
# Returns {1 if written now else 0, the stored JSON}.
WRITE_LUA = """
local asof = tonumber(ARGV[1])
local new = redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
local stored = ARGV[2]
if new == 0 then stored = redis.call('HGET', KEYS[2], ARGV[1]) end
local cur = tonumber(redis.call('HGET', KEYS[1], 'as_of') or '-1')
if asof > cur then
  if new == 1 then
    redis.call('HSET', KEYS[1], unpack(ARGV, 4))
  else
    -- the latest hash was lost but history has this as-of: restore it from the stored value
    local d = cjson.decode(stored)
    local args = {'json', stored}
    for k, v in pairs(d) do
      args[#args + 1] = k
      if v == cjson.null then args[#args + 1] = 'None' else args[#args + 1] = tostring(v) end
    end
    redis.call('HSET', KEYS[1], unpack(args))
  end
end
local n = tonumber(ARGV[3])
if redis.call('HLEN', KEYS[2]) > n then
  local fields = redis.call('HKEYS', KEYS[2])
  table.sort(fields, function(a, b) return tonumber(a) < tonumber(b) end)
  for i = 1, #fields - n do redis.call('HDEL', KEYS[2], fields[i]) end
end
return {new, stored}
"""

# Counters infer_partition reports (names of the stats accumulator's keys).
COUNTS = ("events", "superseded_batch", "superseded_state", "dead_letter", "forecasts", "replayed",
          "checksum_mismatch", "model_error", "non_finite")
# Milliseconds summed over the batch's partitions: Redis read, window building, model (re)load when the
# promoted version changed (incl. the first TensorFlow import of a worker), the model call, Redis writes.
PHASES = ("redis_read_ms", "build_ms", "model_load_ms", "model_ms", "write_ms")


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


@dataclass(frozen=True)
class JobConf:
    """What executors need, shipped inside each task (executors do not read the driver's env)."""

    namespace: str
    models_dir: str
    history_len: int
    redis: RedisSettings = field(compare=False)
    forecasts_topic: str
    deadletter_topic: str
    ready_topic: str

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.namespace, self.models_dir)


# ---------------------------------------------------------------------------------------------------
# Executor side: one _Context per Python worker process (Spark reuses workers between tasks).


class _Context:
    """Redis client, Lua script and the cached model of one executor Python process."""

    RETRY_FAILED_S = 60.0  # a model version that failed to load is retried after this long

    def __init__(self, conf: JobConf) -> None:
        from minutecast.redis import connect

        self.conf = conf
        self.keys = Keys(conf.namespace)
        self.redis = connect(conf.redis)
        self.write_script = self.redis.register_script(WRITE_LUA)
        self.model: Any = None  # minutecast.registry.ServingModel once one is promoted and loaded
        self.failed: tuple[str, float] | None = None  # (version, monotonic time) of the last failed load

    def serving_model(self) -> Any:
        """The promoted model (reloaded when CURRENT changes), or None for persistence.

        One cheap read of the registry's CURRENT file per call; a version that fails to load keeps the
        previous model serving (and is logged), retried after :attr:`RETRY_FAILED_S`.
        """
        from minutecast.registry import Registry

        registry = Registry(Path(self.conf.models_dir))
        version = registry.current_version()
        if version is None:
            self.model = None
            return None
        if self.model is not None and self.model.version == version:
            return self.model
        if self.failed and self.failed[0] == version and time.monotonic() - self.failed[1] < self.RETRY_FAILED_S:
            return self.model
        try:
            t0 = time.perf_counter()
            model = registry.load(version)
            log.warning("loaded model %s (%s) in %.1f s", version, model.kind, time.perf_counter() - t0)
            self.model, self.failed = model, None
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            log.error("model %s failed to load, keeping %s: %s", version,
                      self.model.version if self.model is not None else PERSISTENCE, exc)
            self.failed = (version, time.monotonic())
        return self.model


_CONTEXTS: dict[tuple[str, str], _Context] = {}


def _context(conf: JobConf) -> _Context:
    ctx = _CONTEXTS.get(conf.cache_key)
    if ctx is None:
        ctx = _CONTEXTS[conf.cache_key] = _Context(conf)
    return ctx


def _dead_letter(conf: JobConf, row: Any, reason: str, detail: str) -> tuple[str, str | None, str]:
    key = row.key if isinstance(row.key, str) else None
    dl = DeadLetter.of(ValidationError(reason, detail), row.value if isinstance(row.value, str) else None, "infer",
                       topic=conf.ready_topic, partition=int(row.partition), offset=int(row.offset), key=key)
    return (conf.deadletter_topic, key, dl.to_json().decode())


def _reject_reason(row: Any) -> tuple[str, str] | None:
    """Why a window-ready event cannot be served (reason code, detail), or None when it is fine."""
    if isinstance(row.ticker, str) and row.minute == row.minute and row.ready_at == row.ready_at \
            and row.v == READY_VERSION:
        if not TICKER_RE.match(row.ticker):
            return "bad_ticker", f"{row.ticker[:20]!r} is not a ticker"
        return None
    try:  # Spark's parser said no: ask the schema's own parser for a precise reason code
        WindowReady.from_json(row.value or "")
    except ValidationError as exc:
        return exc.reason, exc.detail
    except json.JSONDecodeError as exc:
        return "not_json", str(exc)[:80]
    except KeyError as exc:
        return "missing_field", str(exc)[:80]
    except (TypeError, ValueError, AttributeError) as exc:
        return "wrong_type", str(exc)[:80]
    return "wrong_type", "a field has the wrong type"


def _forecast_fields(f: Forecast, js: str) -> list[str]:
    """Field/value pairs of the latest-forecast hash: every Forecast field plus ``json``."""
    out = ["json", js]
    for k, v in f.to_dict().items():
        out += [k, "None" if v is None else (repr(v) if isinstance(v, float) else str(v))]
    return out


def infer_partition(conf: JobConf, stats: Any, latencies: Any,
                    batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: every window-ready event of one partition -> forecast rows (see module doc).

    ``stats``/``latencies`` are accumulators (anything with ``add``): counters of :data:`COUNTS` and
    :data:`PHASES`, ``model:<version>`` counts, and ``forecast_at - published_at`` of new forecasts (s).
    """
    frames = [b for b in batches if len(b)]
    if not frames:
        return
    events = pd.concat(frames, ignore_index=True)
    counts: dict[str, float] = defaultdict(float, events=len(events))
    rows: list[tuple[str, str | None, str]] = []
    ctx = _context(conf)

    good_idx = []
    for i, row in enumerate(events.itertuples(index=False)):
        why = _reject_reason(row)
        if why is None:
            good_idx.append(i)
        else:
            rows.append(_dead_letter(conf, row, *why))
            counts["dead_letter"] += 1
    good = events.iloc[good_idx]
    # Newest event per ticker (a re-announced minute: the later ready_at); the rest are superseded.
    good = good.sort_values(["minute", "ready_at", "offset"]).drop_duplicates("ticker", keep="last")
    counts["superseded_batch"] += len(good_idx) - len(good)

    t0 = time.perf_counter()
    # One pipelined round trip for the whole partition (the Faust app's storage format is read there).
    stored: dict[str, list[WindowRow]] = read_windows(ctx.redis, ctx.keys, good["ticker"].tolist())
    t1 = time.perf_counter()
    kept: list[Any] = []
    values: list[np.ndarray] = []
    for row in good.itertuples(index=False):
        minute = int(row.minute)
        series = stored.get(row.ticker) or []
        w = window_for(series, minute)  # the shared window policy
        if w is None:
            if series and series[-1].minute > minute:
                counts["superseded_state"] += 1  # the state moved on; a newer event follows
            else:
                rows.append(_dead_letter(conf, row, "window_missing", f"no ready window at {minute} in Redis"))
                counts["dead_letter"] += 1
            continue
        if isinstance(row.checksum, str) and checksum(w) != row.checksum:
            counts["checksum_mismatch"] += 1  # a late bar changed the window since it was announced
        kept.append(row)
        values.append(w)
    t2 = time.perf_counter()

    if kept:
        windows = np.stack(values)  # (N, WINDOW, 2) raw [close, volume]
        last_close = windows[:, -1, 0]
        model = ctx.serving_model()
        t_model = time.perf_counter()
        predicted, version, kind = last_close.copy(), PERSISTENCE, PERSISTENCE
        if model is not None:
            try:  # one compiled call for the whole partition
                predicted, version, kind = np.asarray(model.predict_prices(windows)), model.version, model.kind
            except Exception as exc:  # noqa: BLE001 - serve (labelled) persistence rather than nothing
                log.error("model %s failed on %d windows, serving persistence: %s", model.version, len(kept), exc)
                counts["model_error"] += len(kept)
        # A non-finite output is never published: that row falls back to persistence, labelled so.
        finite = np.isfinite(predicted)
        counts["non_finite"] += float((~finite).sum())
        forecast_at = time.time()
        t3 = time.perf_counter()
        forecasts = [
            Forecast(ticker=row.ticker, as_of=int(row.minute), horizon_min=HORIZON,
                     predicted_close=float(p) if ok else float(c), last_close=float(c),
                     model_version=version if ok else PERSISTENCE, model_kind=kind if ok else PERSISTENCE,
                     published_at=None if row.published_at != row.published_at else float(row.published_at),
                     window_ready_at=float(row.ready_at), forecast_at=forecast_at)
            for row, p, c, ok in zip(kept, predicted, last_close, finite, strict=True)
        ]
        pipe = ctx.redis.pipeline(transaction=False)
        for f in forecasts:
            js = f.to_json().decode()
            ctx.write_script(keys=[ctx.keys.forecast(f.ticker), ctx.keys.forecast_history(f.ticker)],
                             args=[f.as_of, js, conf.history_len, *_forecast_fields(f, js)], client=pipe)
        results = pipe.execute()
        t4 = time.perf_counter()
        lat: list[float] = []
        for f, (new, js) in zip(forecasts, results, strict=True):
            rows.append((conf.forecasts_topic, f.ticker, js.decode() if isinstance(js, bytes) else js))
            if new:
                counts["forecasts"] += 1
                if f.published_at is not None:
                    lat.append(f.forecast_at - f.published_at)
            else:
                counts["replayed"] += 1
        for f in forecasts:
            counts[f"model:{f.model_version}"] += 1
        counts["model_load_ms"] += round((t_model - t2) * 1000, 3)
        counts["model_ms"] += round((t3 - t_model) * 1000, 3)
        counts["write_ms"] += round((t4 - t3) * 1000, 3)
        latencies.add(lat)
    counts["redis_read_ms"] += round((t1 - t0) * 1000, 3)
    counts["build_ms"] += round((t2 - t1) * 1000, 3)
    stats.add(dict(counts))
    if rows:
        yield pd.DataFrame(rows, columns=["topic", "key", "value"])


def warm_partition(conf: JobConf, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body of the start-up job: open Redis and load the promoted model in this worker."""
    for _ in batches:
        pass
    ctx = _context(conf)
    model = ctx.serving_model()
    yield pd.DataFrame({"version": [model.version if model is not None else PERSISTENCE]})


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
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        from minutecast.metrics import serve

        self.registry = CollectorRegistry()
        r = self.registry
        self.batch = Histogram("minutecast_infer_batch_seconds", "micro-batch duration", registry=r,
                               buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30))
        self.phase = Counter("minutecast_infer_phase_seconds", "time in each phase, summed over partitions",
                             ["phase"], registry=r)
        self.events = Counter("minutecast_infer_events", "window-ready events by outcome", ["outcome"], registry=r)
        self.forecasts = Counter("minutecast_infer_forecasts", "forecasts written (new, not replays)", registry=r)
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
        from minutecast.topics import Topics

        self.spark = spark
        self.settings = settings
        self.topics = Topics(settings.namespace)
        self.conf = JobConf(namespace=settings.namespace, models_dir=str(settings.models_dir),
                            history_len=settings.history_len, redis=settings.redis,
                            forecasts_topic=self.topics.forecasts, deadletter_topic=self.topics.deadletter,
                            ready_topic=self.topics.ready)
        sc = spark.sparkContext
        self.stats = sc.accumulator({}, DictSum())
        self.latencies = sc.accumulator([], ListConcat())
        self.metrics = _Metrics(settings.metrics_host, settings.metrics_port)
        self.stats_path = stats_path
        self.on_batch = on_batch

    def events(self) -> Any:
        """The window-ready stream, parsed (columns: key, value, partition, offset + EVENT_SCHEMA's)."""
        from pyspark.sql import functions as F  # noqa: N812

        from minutecast.kafka import spark_options

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
        from minutecast.kafka import spark_options

        started_at, t0 = time.time(), time.perf_counter()
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
            log.info("batch %d: %d events -> %d forecasts (+%d replayed; superseded %d in batch, %d by state; "
                     "%d dead) in %.0f ms: redis read %.0f, windows %.0f, model load %.0f, model %.0f, writes %.0f ms "
                     "(summed over partitions) %s", batch_id, c.get("events", 0), c.get("forecasts", 0),
                     c.get("replayed", 0), c.get("superseded_batch", 0), c.get("superseded_state", 0),
                     c.get("dead_letter", 0), s.duration_ms, c.get("redis_read_ms", 0), c.get("build_ms", 0),
                     c.get("model_load_ms", 0), c.get("model_ms", 0), c.get("write_ms", 0),
                     " ".join(k for k in c if k.startswith("model:")))
        if self.stats_path is not None:
            with self.stats_path.open("a") as fh:
                fh.write(s.to_json() + "\n")
        if self.on_batch is not None:
            self.on_batch(s)

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
        from pyspark.sql.streaming import StreamingQueryListener

        job = self

        class _Listener(StreamingQueryListener):
            def onQueryStarted(self, event: Any) -> None:  # noqa: N802
                pass

            def onQueryProgress(self, event: Any) -> None:  # noqa: N802
                p = event.progress
                if p.name == job.query_name:
                    job.on_progress(p.batchId, dict(p.durationMs))

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
