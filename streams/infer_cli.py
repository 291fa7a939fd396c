"""``minutecast infer``: the Spark structured-streaming inference job (see ``streams/infer.py``).

    minutecast infer                                  # local[*], micro-batch every 100 ms, until Ctrl-C
    minutecast infer --available-now                  # process what is on the topic, then exit
    minutecast infer --master spark://host:7077 --trigger-ms 500

Waits for Kafka and Redis (as long as they are away: :mod:`minutecast.dependency`), creates missing
topics, then runs until stopped (SIGTERM/SIGINT stop the
query between micro-batches; a SIGKILL is safe too: the checkpoint replays the unfinished batch).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from infra.jars import spark_kafka_jars
from minutecast.flags import Flag, add_flags, settings_from
from minutecast.kafka import ensure_topics, wait_for_kafka
from minutecast.redis import wait_for_redis
from minutecast.settings import InferenceSettings, default_cache
from minutecast.spark import build_session

log = logging.getLogger("minutecast.infer")


# Field of InferenceSettings -> its flag (minutecast.flags).
FLAGS = {
    "master": Flag("--master", str, "Spark master (default: MINUTECAST_MASTER or local[*])"),
    "trigger_ms": Flag("--trigger-ms", int, "micro-batch trigger interval (default 100)"),
    "checkpoint_dir": Flag("--checkpoint", Path, "checkpoint directory (default <home>/checkpoints/infer)",
                           dest="checkpoint"),
    "partitions": Flag("--partitions", int, "partitions per micro-batch = model calls (default 2)"),
    "metrics_port": Flag("--metrics-port", int, "Prometheus port (default 9103; 0 = off)"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_flags(p, FLAGS, ["master", "trigger_ms"])
    p.add_argument("--once", "--available-now", dest="available_now", action="store_true",
                   help="process every event on the topic, then exit")
    add_flags(p, FLAGS, ["checkpoint_dir", "partitions", "metrics_port"])
    p.add_argument("--stats-jsonl", type=Path, help="append one JSON line of stats per micro-batch here")
    p.add_argument("--wait", type=float, default=None,
                   help="seconds to wait for Kafka/Redis at start-up (default: MINUTECAST_DEPENDENCY_WAIT_S, no limit)")


def run(args: argparse.Namespace) -> int:
    settings = settings_from(InferenceSettings, args, FLAGS)
    if not settings.spark_jars:  # the connector's jars from the cache (fetched once from Maven Central)
        jars = ",".join(str(j) for j in spark_kafka_jars(default_cache()))
        settings = settings.model_copy(update={"spark_jars": jars})
    # Every Redis client of the job (driver and executors: the settings travel with the tasks) waits out a
    # Redis outage inside its commands, so a micro-batch pauses instead of failing the query.
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"wait": True})})
    wait_for_kafka(settings.kafka, args.wait)
    wait_for_redis(settings.redis, args.wait).close()
    ensure_topics(settings.kafka, settings.topic_specs())

    from streams.infer import InferenceJob  # the pyspark driver

    spark = build_session(settings, app_name="minutecast-infer")
    job = InferenceJob(spark, settings, stats_path=args.stats_jsonl)
    query = job.start(available_now=args.available_now)
    log.info("inference job %s running (namespace %s, master %s, checkpoint %s)", query.id, settings.namespace,
             settings.master, settings.checkpoint)

    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        threading.Thread(target=query.stop, daemon=True).start()  # not in the handler: it blocks

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    failed = False
    try:
        query.awaitTermination()
    except Exception as exc:  # noqa: BLE001 - StreamingQueryException or a vanished JVM: report, exit 1
        failed = not stopping.is_set()
        if failed:
            log.error("inference query failed: %s", exc)
    finally:
        try:
            spark.stop()
        except Exception as exc:  # noqa: BLE001 - the JVM may already be gone (it was signalled too)
            log.debug("spark.stop(): %s", exc)
    return 1 if failed else 0
