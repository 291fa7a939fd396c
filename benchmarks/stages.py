"""Where the time goes in the e2e benchmark: each forecast's latency split into stages, computed only from
timestamps the pipeline already emits (pure functions: :mod:`benchmarks.e2e` feeds them real data, the
tests synthetic data).

One forecast's timeline (epoch s, every process on one machine, so one clock):

1. ``published_at``: the producer stamps the bar right before ``produce()``;
2. + the producer's delivery latency (librdkafka's ``Message.latency()``: ``produce()`` -> broker ack,
   linger included): the bar is on the broker;
3. ``ready_at`` (``window_ready_at`` in the forecast): the Faust worker's batch (fetch, ``take_events``
   wait, decode, one Redis write) has returned;
4. the Spark micro-batch that served it started its job (``started_at`` of ``--stats-jsonl``: the trigger
   time plus the engine's latestOffset / walCommit / getBatch / queryPlanning of that batch);
5. ``forecast_at``: the model output is ready (stamped before the Redis write);
6. the forecast's Kafka record timestamp (CreateTime: Spark's producer sends the row after its
   partition's Redis write returned, so the forecast is in Redis by then).

The main stages are consecutive differences, so they add up to "published -> forecast on Kafka". The
"of which" rows are per-batch figures (``--stats-jsonl``: phases summed over the batch's partitions,
Spark's ``durationMs``), each counted once per forecast the batch served: every row's percentiles are
over forecasts, i.e. what a forecast experienced.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streams.partition import PHASES, PRE_BATCH

ENGINE_PARTS = ("latestOffset", "walCommit", "getBatch", "queryPlanning", "addBatch", "commitOffsets",
                "triggerExecution")

# (key, label) in table order; labels starting with "  " are "of which" rows of the stage above them.
STAGES: tuple[tuple[str, str], ...] = (
    ("producer_to_broker", "producer -> broker ack (delivery latency, linger included)"),
    ("broker_to_window_ready", "broker -> window ready (Faust: fetch, batch wait, decode, Redis write)"),
    ("ready_to_batch_start", "window ready -> Spark batch start"),
    ("engine_before_batch", "  engine before the batch's job (latestOffset, walCommit, getBatch, queryPlanning)"),
    ("trigger_wait", "  waiting: ready-event publish, next trigger, the batch running before"),
    ("batch_start_to_model_out", "Spark batch start -> model output (job, tasks, Redis read, model)"),
    ("redis_read_build", "  Redis read + window build (summed over partitions)"),
    ("model", "  model (summed over partitions)"),
    ("model_out_to_kafka", "model output -> forecast on Kafka (Redis write, rows to the sink, send)"),
    ("redis_write", "  Redis write (summed over partitions)"),
    ("total", "total: bar published -> forecast_at (the headline p50/p95/p99)"),
    ("total_to_kafka", "total: bar published -> forecast on Kafka (in Redis before that)"),
    ("micro_batch", "Spark micro-batch job (addBatch)"),
    *((f"engine_{p}", f"Spark engine durationMs: {p}") for p in ENGINE_PARTS),
)
LABELS = dict(STAGES)


@dataclass(frozen=True)
class Batch:
    """One micro-batch of the Spark job, from its ``--stats-jsonl`` lines."""

    batch_id: int
    started_at: float  # epoch s: the batch's job started
    duration_ms: float  # the batch's job (Spark's addBatch)
    events: int
    superseded: int  # events not served: a newer one of the ticker in the batch, or in Redis already
    phases: Mapping[str, float]  # PHASES, ms summed over partitions
    engine: Mapping[str, float] | None  # Spark's durationMs of the batch (None: no progress line came)

    @property
    def end(self) -> float:
        return self.started_at + self.duration_ms / 1000


@dataclass(frozen=True)
class Trace:
    """One forecast's timestamps (epoch s); None where that one was not observed."""

    published_at: float
    delivery_s: float | None  # the bar's produce() -> broker ack, s
    ready_at: float
    forecast_at: float
    record_at: float | None  # the forecast's Kafka record timestamp


def parse_batches(records: Iterable[Mapping[str, Any]]) -> list[Batch]:
    """The non-empty micro-batches of a ``--stats-jsonl`` file (its lines as dicts), by start time. A
    batch's stats line and its engine line (``progress_batch_id``/``engine_ms``) are joined by id."""
    stats: dict[int, Mapping[str, Any]] = {}
    engine: dict[int, Mapping[str, float]] = {}
    for r in records:
        if "progress_batch_id" in r:
            engine[int(r["progress_batch_id"])] = r.get("engine_ms") or {}
        elif "batch_id" in r and r.get("events"):
            stats[int(r["batch_id"])] = r
    out = [Batch(i, float(r["started_at"]), float(r["duration_ms"]), int(r["events"]),
                 int(r.get("superseded_batch", 0) + r.get("superseded_state", 0)),
                 {p: float(r.get(p, 0.0)) for p in PHASES}, engine.get(i))
           for i, r in stats.items()]
    return sorted(out, key=lambda b: b.started_at)


def batch_for(batches: Sequence[Batch], t: float, starts: Sequence[float] | None = None,
              slack_s: float = 0.002) -> Batch | None:
    """The batch (sorted by start) running at ``t`` (a forecast_at): batches run one after another, so
    at most one contains it. ``starts``: the batches' start times (precomputed); ``slack_s``: timestamps
    are ms-rounded in places."""
    starts = [b.started_at for b in batches] if starts is None else starts
    i = bisect.bisect_right(starts, t + slack_s) - 1
    if i < 0 or t > batches[i].end + slack_s:
        return None
    return batches[i]


def split(traces: Iterable[Trace], batches: Sequence[Batch]) -> tuple[dict[str, list[float]], int]:
    """Each stage's values (ms), one per forecast that has the timestamps it needs, and the number of
    forecasts no batch contained (their batch-side stages are left out)."""
    out: dict[str, list[float]] = {k: [] for k, _ in STAGES}
    starts = [b.started_at for b in batches]
    unmatched = 0

    def add(key: str, seconds: float) -> None:
        out[key].append(seconds * 1000)

    for t in traces:
        add("total", t.forecast_at - t.published_at)
        if t.delivery_s is not None and math.isfinite(t.delivery_s):
            add("producer_to_broker", t.delivery_s)
            add("broker_to_window_ready", t.ready_at - (t.published_at + t.delivery_s))
        if t.record_at is not None:
            add("model_out_to_kafka", t.record_at - t.forecast_at)
            add("total_to_kafka", t.record_at - t.published_at)
        b = batch_for(batches, t.forecast_at, starts)
        if b is None:
            unmatched += 1
            continue
        add("ready_to_batch_start", b.started_at - t.ready_at)
        add("batch_start_to_model_out", t.forecast_at - b.started_at)
        ph = b.phases
        out["redis_read_build"].append(ph.get("redis_read_ms", 0.0) + ph.get("build_ms", 0.0))
        out["model"].append(ph.get("model_ms", 0.0) + ph.get("model_load_ms", 0.0))
        out["redis_write"].append(ph.get("write_ms", 0.0))
        out["micro_batch"].append(b.duration_ms)
        if b.engine is not None:
            pre = sum(float(b.engine.get(p, 0)) for p in PRE_BATCH)
            out["engine_before_batch"].append(pre)
            add("trigger_wait", b.started_at - t.ready_at - pre / 1000)
            for p in ENGINE_PARTS:
                out[f"engine_{p}"].append(float(b.engine.get(p, 0)))
    return out, unmatched


def percentiles(values_ms: Sequence[float]) -> dict[str, float | int]:
    a = np.asarray(values_ms, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1), "p99_ms": round(float(p99), 1),
            "n": int(a.size)}


def summarize(traces: Iterable[Trace], batches: Sequence[Batch]) -> dict[str, Any]:
    """``{"stages": {key: {p50_ms, p95_ms, p99_ms, n}}, "unmatched": n}`` in :data:`STAGES` order;
    stages without a value are left out."""
    values, unmatched = split(traces, batches)
    return {"stages": {k: percentiles(v) for k, v in values.items() if v}, "unmatched": unmatched}


def batch_means(batches: Sequence[Batch]) -> dict[str, Any]:
    """Per micro-batch figures (each batch once, unweighted): count, duration p50/p95, events per batch,
    mean ms of each phase and each engine part (the e2e result's older ``*_mean_ms`` names)."""
    def mean(xs: Sequence[float]) -> float | None:
        return round(float(np.mean(xs)), 1) if len(xs) else None

    durs = [b.duration_ms for b in batches]
    out: dict[str, Any] = {
        "micro_batches": len(batches),
        "micro_batch_p50_ms": round(float(np.percentile(durs, 50)), 1) if durs else None,
        "micro_batch_p95_ms": round(float(np.percentile(durs, 95)), 1) if durs else None,
        "events_per_batch_mean": mean([b.events for b in batches]),
    }
    for p in PHASES:
        out[p.removesuffix("_ms") + "_mean_ms"] = mean([b.phases.get(p, 0.0) for b in batches])
    engines = [b.engine for b in batches if b.engine is not None]
    for p in ENGINE_PARTS:
        out[f"engine_{p}_mean_ms"] = mean([float(e.get(p, 0)) for e in engines])
    return out


def _num(v: Any) -> str:
    return "" if v is None else f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"


def table(stages: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown table of a result's ``stages``: stage, p50, p95, p99 (ms), forecasts counted."""
    lines = ["| stage | p50 ms | p95 ms | p99 ms | forecasts |", "|---|---:|---:|---:|---:|"]
    keys = [k for k, _ in STAGES if k in stages] + [k for k in stages if k not in LABELS]
    for k in keys:
        s, label = stages[k], LABELS.get(k, k)
        label = f"&nbsp;&nbsp;of which: {label.strip()}" if label.startswith("  ") else label
        lines.append(f"| {label} | {_num(s.get('p50_ms'))} | {_num(s.get('p95_ms'))} | {_num(s.get('p99_ms'))} | "
                     f"{s.get('n', '')} |")
    return "\n".join(lines)
