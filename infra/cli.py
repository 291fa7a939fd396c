"""Start, stop and check the local Kafka broker (KRaft, Maven jars) and Redis (password, AOF).

    minutecast infra up        # idempotent: a second `up` only checks both answer
    minutecast infra up --brokers 3   # three KRaft brokers (RF 3, min.insync.replicas 2) on 9092/9094/9096
    minutecast infra status
    minutecast infra down
    minutecast infra fetch     # only download the Maven jars (Kafka broker, Spark connector)
    minutecast infra topics    # only create missing topics on MINUTECAST_KAFKA_BOOTSTRAP (any broker)
    minutecast infra spark-up --workers 2   # a Spark standalone master + workers (infra/spark_cluster.py)
    minutecast infra spark-down
"""

from __future__ import annotations

import argparse

from infra import jars, services
from infra.spark_cluster import Cluster
from minutecast.kafka import ensure_topics, wait_for_kafka
from minutecast.settings import InfraSettings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status", "fetch", "topics", "spark-up", "spark-down"])
    p.add_argument("--brokers", type=int, default=None,
                   help="up/down/status: local Kafka brokers (default MINUTECAST_KAFKA_BROKERS or 1; 3 replicates)")
    p.add_argument("--workers", type=int, default=2, help="spark-up: Spark workers to start")
    p.add_argument("--worker-cores", type=int, default=1, help="spark-up: cores per worker")
    p.add_argument("--worker-memory", default="1g", help="spark-up: memory per worker (Spark units: 1g, 512m)")


def run(args: argparse.Namespace) -> int:
    s = InfraSettings(**({"kafka_brokers": args.brokers} if args.brokers else {}))
    if args.action == "fetch":
        print(jars.kafka_libs(s.cache))
        for j in jars.spark_kafka_jars(s.cache):
            print(j)
        return 0
    if args.action == "topics":
        wait_for_kafka(s.kafka, s.start_timeout_s)
        made = ensure_topics(s.kafka, s.topic_specs())
        print("topics created: " + (", ".join(made) if made else "none, all existed"))
        return 0
    if args.action == "spark-up":
        cluster = Cluster.of(s)
        cluster.up(args.workers, args.worker_cores, args.worker_memory)
        print(f"spark master {cluster.url} with {cluster.alive_workers()} workers "
              f"(web UI http://{cluster.host}:{cluster.ui_port}/); MINUTECAST_MASTER={cluster.url} minutecast infer")
        return 0
    if args.action == "spark-down":
        stopped = Cluster.of(s).down()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.action == "down":
        stopped = services.down(s)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    rows = services.up(s) if args.action == "up" else services.status(s)
    for row in rows:
        print(row.line())
    if s.kafka_brokers > 1:
        print(f"clients: MINUTECAST_KAFKA_BOOTSTRAP={services.bootstrap(s)}")
    return 0 if all(r.up for r in rows) else 1
