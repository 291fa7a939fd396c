"""Benchmark: what a Spark micro-batch costs on this machine before any of our work, the floor under every
e2e latency.

    python -m benchmarks.spark_floor                      # bursts of 503 window-ready events, 30 of them
    python -m benchmarks.spark_floor --events 5000 --bursts 20

The inference job's own plan and session (:class:`streams.infer.InferenceJob`'s Kafka source and JSON parse,
``coalesce`` into ``MINUTECAST_PARTITIONS``, ``mapInPandas``, the Kafka sink, its trigger and asynchronous
progress tracking), with a Python body that does no work: it hands back one forecast-sized row per event.
No Redis, no model. Bursts of ``--events`` ready events (every ticker of a minute at once, the real shape),
one every ``--every-s`` seconds, on a uuid topic; Spark's ``durationMs`` of each micro-batch that carried a
whole burst. The figures are what the e2e benchmark's "Spark batch" stages cannot go below here.

The last stdout line is the JSON result.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from infra.jars import spark_kafka_jars
from minutecast.kafka import delete_namespace_topics, ensure_topics, make_producer
from minutecast.settings import InferenceSettings, default_cache
from minutecast.spark import build_session
from minutecast.topics import Topics

ROW = "x" * 600  # about a forecast's JSON (bytes)


def idle_body(topic: str, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body that only drains its input: one output row per event, to ``topic`` (the run's
    forecasts topic, deleted with its namespace)."""
    frames = [b for b in batches if len(b)]
    if frames:
        ev = pd.concat(frames, ignore_index=True)
        yield pd.DataFrame({"topic": topic, "key": ev["ticker"], "value": ROW})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=503, help="window-ready events per burst (tickers)")
    ap.add_argument("--bursts", type=int, default=30, help="timed bursts")
    ap.add_argument("--every-s", type=float, default=2.0, help="seconds between bursts (each fits in one batch)")
    ap.add_argument("--quick", action="store_true", help="10 bursts")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bursts = 10 if args.quick else args.bursts
    ns = f"sf{uuid.uuid4().hex[:10]}"
    from streams.infer import OUT_SCHEMA, InferenceJob, trigger_time

    settings = InferenceSettings(namespace=ns, checkpoint_dir=default_cache() / "bench" / ns,
                                 spark_jars=",".join(str(j) for j in spark_kafka_jars(default_cache())))
    topics = Topics(ns)
    ensure_topics(settings.kafka, settings.topic_specs())
    spark = build_session(settings, app_name="minutecast-spark-floor")
    job = InferenceJob(spark, settings)
    progress: list[Any] = []
    job.listen(progress.append)
    # the job's own sink, checkpoint, asynchronous progress and trigger, on a plan whose body does no work
    plan = job.events().coalesce(settings.partitions).mapInPandas(partial(idle_body, topics.forecasts), OUT_SCHEMA)
    query = job.writer(plan).start()
    producer = make_producer(settings.kafka)
    names = [f"S{i:05d}" for i in range(args.events)]
    timed_from = math.inf
    try:
        for burst in range(bursts + 2):  # the first two warm the plan and the Python workers up
            now = time.time()
            if burst == 2:
                timed_from = now
            for t in names:
                producer.produce(topics.ready, key=t, value=json.dumps(
                    {"v": 1, "ticker": t, "minute": 1_800_000_000 + 60 * burst, "checksum": "0" * 16,
                     "published_at": now, "ready_at": now}))
            producer.flush(30)
            time.sleep(args.every_s)
    finally:
        query.stop()
        spark.stop()
        delete_namespace_topics(settings.kafka, ns)
    # Batches triggered once the timed bursts began (not "all but the first two whole ones": on a loaded machine
    # the warm-up bursts were split or merged, and that dropped timed ones: 0 of 4 whole in a CI run).
    timed = [p for p in progress if trigger_time(p) >= timed_from]
    full = [dict(p.durationMs) for p in timed if p.numInputRows == args.events]
    split = sum(1 for p in timed if 0 < p.numInputRows < args.events)

    def pct(key: str, q: float) -> float | None:
        vals = [d[key] for d in full if key in d]
        return round(float(np.percentile(vals, q)), 1) if vals else None

    print(json.dumps({
        "benchmark": "spark_floor", "events": args.events, "bursts": len(full), "split_batches": split,
        "pace": f"a burst of {args.events} window-ready events every {args.every_s:g} s, a Python body doing no work",
        "trigger_ms": settings.trigger_ms, "partitions": settings.partitions,
        "add_batch_p50_ms": pct("addBatch", 50), "add_batch_p95_ms": pct("addBatch", 95),
        "query_planning_p50_ms": pct("queryPlanning", 50), "latest_offset_p50_ms": pct("latestOffset", 50),
        "trigger_execution_p50_ms": pct("triggerExecution", 50),
        "trigger_execution_p95_ms": pct("triggerExecution", 95)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
